using System.Runtime.InteropServices;
using P11Proxy.Wire;
using P11Proxy.Wire.Transport;

namespace P11Proxy.Broker;

/// <summary>
/// Serves the backend to clients: many over a unix socket (a thread per connection, each with its
/// own view), or one over stdin/stdout. A client that sends garbage loses its own connection only.
/// </summary>
internal sealed partial class Server
{
    private readonly Backend _backend;
    private readonly TokenFilter _filter;
    private readonly BrokerLog _log;
    private readonly HashSet<uint> _allowedUids;
    private readonly HashSet<uint> _allowedGids;
    private int _connections;

    public Server(Backend backend, TokenFilter filter, BrokerLog log, IEnumerable<uint> allowedUids, IEnumerable<uint> allowedGids)
    {
        _backend = backend;
        _filter = filter;
        _log = log;
        _allowedUids = [getuid(), .. allowedUids];
        _allowedGids = [.. allowedGids];
    }

    [LibraryImport("libc")]
    private static partial uint getuid();

    public void ServeSocket(UnixListener listener)
    {
        while (true)
        {
            int fd = listener.Accept();
            if (fd < 0) return;
            var peer = UnixListener.PeerOf(fd);
            if (peer is not { } credentials || !(_allowedUids.Contains(credentials.Uid) || _allowedGids.Contains(credentials.Gid)))
            {
                _log.Warn(peer is { } p
                    ? $"refused a connection from uid {p.Uid} gid {p.Gid} pid {p.Pid}: not allowed (see --allow-uid/--allow-gid)"
                    : "refused a connection whose credentials could not be read");
                UnixListener.Close(fd);
                continue;
            }
            string name = $"client {Interlocked.Increment(ref _connections)} (uid {credentials.Uid}, pid {credentials.Pid})";
            var channel = new RpcChannel(fd, fd, isSocket: true);
            var thread = new Thread(() => Serve(channel, name)) { IsBackground = true, Name = name };
            thread.Start();
        }
    }

    public void ServeStdio()
    {
        // stdout carries the protocol: nothing else may ever be written to it.
        using var channel = new RpcChannel(0, 1, isSocket: false);
        Serve(channel, "stdio client");
    }

    private void Serve(RpcChannel channel, string name)
    {
        try
        {
            if (!channel.NegotiateAsServer(WireProfile.MaxVersion, out byte version))
            {
                channel.Dispose();
                return;
            }
            _log.Info($"{name} connected, protocol version {version}");
            new ClientConnection(channel, name, WireProfile.For(version), _backend, _filter, _log).Run();
        }
        catch (TransportException e)
        {
            _log.Warn($"{name}: {e.Message}; connection closed");
            channel.Dispose();
        }
    }
}

/// <summary>
/// One client's connection. Requests are answered concurrently and as they finish, tagged with
/// the caller's call code, so a slow signature does not hold up another thread's small call.
/// One worker at a time is the reader. After reading a request that may take a while (crypto,
/// key generation, login, slot events) it hands the reader role to a parked worker (or starts
/// one, up to <see cref="MaxWorkers"/>) before handling it; a quick request is handled by the
/// reader itself, which then reads on, so the common one-call-at-a-time case costs one read and
/// one write and no thread hand-off.
/// </summary>
internal sealed class ClientConnection
{
    private const int MaxWorkers = 8;

    private readonly RpcChannel _channel;
    private readonly string _name;
    private readonly WireProfile _profile;
    private readonly Backend _backend;
    private readonly TokenFilter _filter;
    private readonly BrokerLog _log;
    private readonly ClientState _client;
    private readonly object _park = new();
    private readonly object _writeLock = new();
    private int _workers;
    private int _parked;
    private bool _readerActive;
    private volatile bool _closing;

    public ClientConnection(RpcChannel channel, string name, WireProfile profile, Backend backend, TokenFilter filter, BrokerLog log)
    {
        _channel = channel;
        _name = name;
        _profile = profile;
        _backend = backend;
        _filter = filter;
        _log = log;
        _client = new ClientState(name);
    }

    /// <summary>Serves until the client leaves; the calling thread is the first worker.</summary>
    public void Run()
    {
        Interlocked.Increment(ref _workers);
        Work();
    }

    /// <summary>Calls that return quickly whatever the token: the reader handles them itself.</summary>
    private static bool IsQuick(uint callId) => (RpcCallId)callId is
        RpcCallId.C_Initialize or RpcCallId.C_Finalize or RpcCallId.C_GetInfo or RpcCallId.C_GetSlotList or
        RpcCallId.C_GetSlotInfo or RpcCallId.C_GetTokenInfo or RpcCallId.C_GetMechanismList or
        RpcCallId.C_GetMechanismInfo or RpcCallId.C_OpenSession or RpcCallId.C_CloseSession or
        RpcCallId.C_GetSessionInfo or RpcCallId.C_Logout or RpcCallId.C_GetObjectSize or
        RpcCallId.C_GetAttributeValue or RpcCallId.C_SetAttributeValue or RpcCallId.C_FindObjectsInit or
        RpcCallId.C_FindObjects or RpcCallId.C_FindObjectsFinal or RpcCallId.C_GenerateRandom or
        RpcCallId.C_SeedRandom or RpcCallId.C_DestroyObject;

    private void Work()
    {
        var dispatcher = new Dispatcher(_backend, _filter, _client, _log, _profile);
        byte[] body = new byte[4096];
        try
        {
            while (true)
            {
                lock (_park)
                {
                    while (_readerActive && !_closing)
                    {
                        _parked++;
                        Monitor.Wait(_park);
                        _parked--;
                    }
                    if (_closing) break;
                    _readerActive = true;
                }

                if (!_channel.TryReceiveFrame(out uint code, out var frame))
                {
                    _log.Info($"{_name} disconnected");
                    Close();
                    break;
                }
                if (body.Length < frame.Length)
                    body = new byte[Math.Max(frame.Length, body.Length * 2)];
                frame.Span.CopyTo(body);
                int length = frame.Length;
                uint callId = length >= 4 ? System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(body) : 0;

                bool handOver = !IsQuick(callId) || _channel.HasBufferedData;
                lock (_park)
                {
                    _readerActive = false;
                    if (handOver)
                    {
                        if (_parked > 0) Monitor.Pulse(_park);
                        else if (_workers < MaxWorkers) StartWorker();
                    }
                }
                try
                {
                    if (!dispatcher.Handle(new ReadOnlyMemory<byte>(body, 0, length), out var reply))
                    {
                        Close();
                        break;
                    }
                    lock (_writeLock)
                        _channel.SendFrame(code, reply);
                }
                finally
                {
                    Array.Clear(body, 0, length); // requests may carry PINs
                }
            }
        }
        catch (TransportException e)
        {
            if (!_closing) _log.Warn($"{_name}: {e.Message}; connection closed");
            Close();
        }
        catch (Exception e)
        {
            _log.Error($"{_name}: internal error {e.GetType().Name}: {e.Message}; connection closed");
            Close();
        }
        finally
        {
            dispatcher.Dispose();
            if (Interlocked.Decrement(ref _workers) == 0)
            {
                // The last worker out releases what the client left behind.
                var cleanup = new Dispatcher(_backend, _filter, _client, _log, _profile);
                cleanup.CloseClientSessions();
                cleanup.Dispose();
                _channel.Dispose();
            }
        }
    }

    /// <summary>Called with <see cref="_park"/> held.</summary>
    private void StartWorker()
    {
        Interlocked.Increment(ref _workers);
        new Thread(Work) { IsBackground = true, Name = _name }.Start();
    }

    /// <summary>Stops every worker: a reader blocked on the socket is woken by the shutdown.</summary>
    private void Close()
    {
        lock (_park)
        {
            _closing = true;
            Monitor.PulseAll(_park);
        }
        _channel.Shutdown();
    }
}
