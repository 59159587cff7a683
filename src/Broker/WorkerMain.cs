using System.Diagnostics;
using System.Runtime.InteropServices;
using P11Proxy.Wire.Transport;

namespace P11Proxy.Broker;

/// <summary>
/// A worker process of <c>serve</c> (mode <c>worker</c>, started by the listener only): it loads
/// the module, tells the listener it is ready, receives one client's connection (SCM_RIGHTS on
/// its control socket, fd 3), initialises the module for that client, serves it with the same
/// concurrent dispatch as ever (<see cref="ClientConnection"/>) and exits when the client leaves.
/// Whatever the module does here (crash, hang, leak, log in, keep session objects, consume slot
/// events) stays with this one client, as with p11-kit's process per connection.
///
/// C_Initialize waits for the client (unless --initialize-ahead): the module's view of its tokens
/// is then the one the client would get loading the module itself at that moment, as with p11-kit.
/// A module initialised ahead shows the tokens of when the spare started (SoftHSM reads its token
/// list at C_Initialize: a token created since is missing), and SoftHSM's file store, read by one
/// process while another logs in, can come up with no token at all (2 of 100 clients in a row
/// found none when every spare initialised as the previous client logged in; 0 of 100 this way).
/// What stays ahead of the client is the process, its runtime and loading the module.
///
/// Lifetime: the kernel kills the worker when the listener dies (PR_SET_PDEATHSIG); SIGTERM from
/// the listener ends the client's connection. When the client leaves, the calls still running
/// get <see cref="CallGraceMilliseconds"/> to finish, then the module is finalised (which ends a
/// pending C_WaitForSlotEvent); a C_Finalize that does not return within
/// <see cref="FinalizeGraceMilliseconds"/> (a module hung in a call) is abandoned and the process
/// exits without it.
/// </summary>
internal static class WorkerMain
{
    /// <summary>The control socket's descriptor in a worker (the listener's posix_spawn puts it there).</summary>
    public const int ControlFd = 3;

    private const int CallGraceMilliseconds = 2000;
    private const int FinalizeGraceMilliseconds = 5000;

    public static int Run(string module, IReadOnlyList<string> tokens, bool verbose, int listenerPid, bool initializeAhead, string? initReserved)
    {
        // First of all: tied to the listener, which may have died before this line ran.
        Posix.DieWithParent(Posix.SIGKILL);
        if (Posix.getppid() != listenerPid)
        {
            Console.Error.WriteLine("p11proxy-broker: the worker mode is started by 'p11proxy-broker serve' only");
            return 2;
        }
        var log = new BrokerLog(verbose, source: $"worker {Environment.ProcessId}");
        long started = Stopwatch.GetTimestamp();
        Backend backend;
        TokenFilter filter;
        try
        {
            filter = TokenFilter.Parse(tokens);
            NativeHeap.KeepLargeBlocksOutOfThreadHeaps();
            backend = initializeAhead ? Backend.Load(module, initReserved) : Backend.Open(module, initReserved);
        }
        catch (BrokerException e)
        {
            log.Error(e.Message);
            return 1;
        }
        uint startMicroseconds = (uint)Math.Min(Stopwatch.GetElapsedTime(started).TotalMicroseconds, uint.MaxValue);

        int stopFd = Posix.WakeFd();
        var serving = new StrongBox<bool>(false);
        void Stop(PosixSignalContext context)
        {
            context.Cancel = true;
            // Idle: the wait for a client ends; serving: the monitor below ends the connection.
            if (!Volatile.Read(ref serving.Value)) Posix.shutdown(ControlFd, 2);
            Posix.Wake(stopFd);
        }
        using var term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, Stop);
        using var interrupt = PosixSignalRegistration.Create(PosixSignal.SIGINT, Stop);

        Span<byte> message = stackalloc byte[HandOffMessage.MaxLength];
        int length = HandOffMessage.Encode(new WorkerReady(startMicroseconds), message);
        if (Posix.SendMessage(ControlFd, message[..length]) != 0)
            return Finalize(backend, log); // the listener is gone

        length = Posix.ReceiveMessage(ControlFd, message, out int clientFd, out _);
        Volatile.Write(ref serving.Value, true);
        Posix.close(ControlFd);
        if (length <= 0 || clientFd < 0 || !HandOffMessage.TryDecode(message[..length], out ClientHandOff handOff))
        {
            // Let go while idle (the listener shuts down, or keeps no spare): nothing to serve.
            if (clientFd >= 0) Posix.close(clientFd);
            if (length > 0) log.Error($"unexpected message from the listener ({length} bytes); exiting");
            return Finalize(backend, log);
        }

        if (!backend.Initialized)
        {
            long initializing = Stopwatch.GetTimestamp();
            try
            {
                backend.Initialize();
            }
            catch (BrokerException e)
            {
                log.Error($"client {handOff.Serial} (uid {handOff.Uid}, pid {handOff.Pid}): {e.Message}; closing its connection");
                Posix.close(clientFd);
                return 1;
            }
            log.Trace($"client {handOff.Serial}: module initialised in {Stopwatch.GetElapsedTime(initializing).TotalMilliseconds:0.0} ms");
        }
        var client = ClientArrival.Prepare(handOff, backend, log);
        HeldPins.Arrive(client, clientFd, backend, log);
        Serve(client, clientFd, backend, filter, log, stopFd);
        return Finalize(backend, log);
    }

    private sealed class StrongBox<T>(T value)
    {
        public T Value = value;
    }

    /// <summary>Serves the client until it leaves (or SIGTERM), giving calls still running a grace period.</summary>
    private static void Serve(ClientPeer client, int clientFd, Backend backend, TokenFilter filter, BrokerLog log, int stopFd)
    {
        var channel = new RpcChannel(clientFd, clientFd, isSocket: true) { Budget = Server.RequestBudget, LargeBuffers = Server.SpareBuffers };
        // A second descriptor of the connection, watched for the client hanging up: the reader may
        // be stuck inside the module and never see it.
        int watchFd = Posix.fcntl(clientFd, Posix.F_DUPFD_CLOEXEC, 0);
        int doneFd = Posix.WakeFd();
        var server = new Server(backend, filter, log);
        var thread = new Thread(() => server.ServeHandedOver(channel, client.Name, client.Version, () => Posix.Wake(doneFd)))
        {
            IsBackground = true, // a thread stuck in the module must not keep the process alive
            Name = client.Name,
        };
        thread.Start();

        Span<Posix.PollFd> fds = stackalloc Posix.PollFd[3];
        fds[0] = new() { Fd = doneFd, Events = Posix.POLLIN };
        fds[1] = new() { Fd = stopFd, Events = Posix.POLLIN };
        fds[2] = new() { Fd = watchFd, Events = Posix.POLLRDHUP };
        while (Posix.poll(fds, watchFd >= 0 ? 3u : 2u, -1) < 0 && Posix.LastError == Posix.EINTR) { }
        if (fds[0].Revents != 0) // finished on its own: the usual way
        {
            CloseQuietly(watchFd);
            return;
        }
        HeldPins.Current?.CancelAsks(); // an ask-pass program running for the client that left
        if (fds[1].Revents != 0)
        {
            log.Info($"{client.Name}: stopping at the listener's request");
            channel.Shutdown();
        }
        Span<Posix.PollFd> done = stackalloc Posix.PollFd[1];
        done[0] = new() { Fd = doneFd, Events = Posix.POLLIN };
        if (Posix.poll(done, 1, CallGraceMilliseconds) <= 0)
            log.Warn($"{client.Name} left while a call was still running in the module; finalising the module without waiting for it");
        CloseQuietly(watchFd);
    }

    private static void CloseQuietly(int fd)
    {
        if (fd >= 0) Posix.close(fd);
    }

    /// <summary>C_Finalize, abandoned (and the process ended) if the module does not return from it in time.</summary>
    private static int Finalize(Backend backend, BrokerLog log)
    {
        var watchdog = new Thread(() =>
        {
            Thread.Sleep(FinalizeGraceMilliseconds);
            log.Error($"the module's C_Finalize has not returned after {FinalizeGraceMilliseconds} ms; exiting without it");
            Posix.ExitNow(3);
        }) { IsBackground = true, Name = "finalize watchdog" };
        watchdog.Start();
        HeldPins.Current?.CloseHiddenSessions(backend);
        backend.Dispose();
        return 0;
    }
}

/// <summary>Who a worker serves: the listener's number for the connection and the peer's credentials at accept.</summary>
internal sealed record ClientPeer(ulong Serial, uint Uid, uint Gid, int Pid, byte Version)
{
    /// <summary>How log lines name this client.</summary>
    public string Name => $"client {Serial} (uid {Uid}, pid {Pid})";
}

/// <summary>
/// Per-client set-up in a worker, after the client's connection arrived and before its first
/// request is read. The peer's uid, gid and pid are known here, and the module is initialised but
/// untouched by the client: the place for policy that depends on who connected (such as a token
/// the broker logs in for that peer before it arrives).
/// </summary>
internal static class ClientArrival
{
    public static ClientPeer Prepare(ClientHandOff handOff, Backend backend, BrokerLog log)
    {
        var peer = new ClientPeer(handOff.Serial, handOff.Uid, handOff.Gid, handOff.Pid, handOff.Version);
        log.Trace($"client {peer.Serial} (uid {peer.Uid}, gid {peer.Gid}, pid {peer.Pid}) connected, protocol version {peer.Version}, module {backend.Path}");
        return peer;
    }
}
