using System.Diagnostics;
using P11Proxy.Wire;
using P11Proxy.Wire.Transport;

namespace P11Proxy.Broker;

/// <summary>What the listener of <c>serve</c> needs to know (the options that are not the module's).</summary>
internal sealed class ListenerSettings
{
    public required int MaxClients { get; init; }
    public required int SpareWorkers { get; init; }
    public required long WorkerMemoryBytes { get; init; } // 0: no cap
    public required int HandshakeTimeoutMilliseconds { get; init; }
    public required ulong OpenFileLimit { get; init; }
    public required HashSet<uint> AllowedUids { get; init; } // the broker's own uid included
    public required HashSet<uint> AllowedGids { get; init; }
    /// <summary>The options every worker is started with: the module and how to serve it.</summary>
    public required IReadOnlyList<string> WorkerOptions { get; init; }
    /// <summary>Spares initialise the module ahead of their client, not when it arrives (--initialize-ahead).</summary>
    public required bool InitializeAhead { get; init; }
}

/// <summary>
/// The process model of <c>serve</c>: this listener never loads the vendor module. It accepts a
/// connection, checks the peer's credentials (SO_PEERCRED) against the allow lists and
/// --max-clients, waits (with a deadline, without a thread or a process) for the client's
/// version byte and answers it, then hands the connection (SCM_RIGHTS) to a worker process of its
/// own: this executable started again in worker mode (<see cref="WorkerMain"/>), which loaded the
/// module before the client arrived, initialises it for the client, serves that one client and
/// exits when it leaves. One idle worker (--spare-workers) is kept started ahead of the next
/// client and replaced after each hand-off, so a client does not wait for a process to start.
///
/// Everything runs on the main thread in one poll loop: the listening socket, connections waiting
/// for their handshake, workers' control sockets, a pidfd per worker (exit is noticed and reaped
/// with wait4, which also gives its peak RSS, without SIGCHLD races), and a wake-up for SIGTERM.
/// Workers are started from this thread, so their parent-death signal (set by each worker) fires
/// when the listener dies however it dies.
/// </summary>
internal sealed class Listener
{
    /// <summary>Connections waiting for their version byte, at most (the oldest is closed to make room).</summary>
    private const int MaxPendingHandshakes = 4096;

    /// <summary>Connections accepted per pass of the loop, so a flood cannot starve the rest of it.</summary>
    private const int AcceptsPerPass = 64;

    /// <summary>How often worker memory is read (/proc/PID/statm) when --worker-memory-mib is set.</summary>
    private const int MemoryCheckMilliseconds = 100;

    /// <summary>How long workers get to finish after SIGTERM at shutdown before they are killed.</summary>
    private const int ShutdownGraceMilliseconds = 5000;

    private UnixListener _socket = null!; // set by Run
    private readonly ListenerSettings _settings;
    private readonly ProcessLog _log;
    private readonly LogThrottle _throttle;
    private readonly int _stopFd = Posix.WakeFd();
    private readonly int _maxConcurrentStarts = Math.Max(4, 2 * Environment.ProcessorCount);
    private readonly Posix.PreparedCommand _workerCommand;
    private readonly Posix.PreparedCommand _initializingWorkerCommand;

    private readonly LinkedList<Pending> _pending = new();
    private readonly LinkedList<Waiting> _waiting = new();
    private readonly Dictionary<int, WorkerProcess> _workers = new();
    private ulong _serial;
    private int _serving;

    private long _acceptPausedUntil;
    private int _acceptBackoff = InitialBackoff;
    private const int InitialBackoff = 20;
    private long _spawnPausedUntil;
    private int _spawnFailures;
    private bool _anyWorkerReady;
    private long _nextMemoryCheck;
    private volatile string? _stopSignal;
    private bool _stopping;
    private long _shutdownDeadline;
    private bool _killedAll;

    private sealed class Pending
    {
        public LinkedListNode<Pending>? Node;
        public required int Fd;
        public required PeerCredentials Peer;
        public required ulong Serial;
        public required long Accepted;
    }

    private sealed class Waiting
    {
        public required int Fd;
        public required PeerCredentials Peer;
        public required ulong Serial;
        public required byte Version;
        public required long Since;
    }

    private enum WorkerState { Starting, Ready, Serving, Dismissed, Lost }

    private sealed class WorkerProcess
    {
        public required int Pid;
        public required int PidFd;
        public int ControlFd;
        public WorkerState State;
        public required long Spawned;
        public long Ready;
        public uint ModuleStartMicroseconds;
        public Waiting? Client;
        public long ServingSince;
        public long KilledForMemoryKib;
        public bool Terminated;
        public PidWatch? Watch;
    }

    /// <summary>The poll-set owner of a worker's pidfd (its control socket's owner is the worker itself).</summary>
    private sealed record PidWatch(WorkerProcess Worker);

    public Listener(ListenerSettings settings, ProcessLog log)
    {
        _settings = settings;
        _log = log;
        _throttle = new LogThrottle(log);
        // Workers do not inherit systemd's socket-activation variables (fd 3 is their control socket).
        var environment = Environment.GetEnvironmentVariables().Keys.Cast<string>()
            .Where(name => name is not ("LISTEN_FDS" or "LISTEN_PID" or "LISTEN_FDNAMES"))
            .Select(name => $"{name}={Environment.GetEnvironmentVariable(name)}").ToList();
        List<string> Arguments(bool initializeAhead)
        {
            var arguments = new List<string> { "p11proxy-broker", "worker", "--listener-pid", Environment.ProcessId.ToString() };
            if (initializeAhead) arguments.Add("--initialize-ahead");
            arguments.AddRange(settings.WorkerOptions);
            return arguments;
        }
        _workerCommand = new Posix.PreparedCommand(Posix.SelfPath, Arguments(settings.InitializeAhead), environment);
        _initializingWorkerCommand = new Posix.PreparedCommand(Posix.SelfPath, Arguments(initializeAhead: true), environment);
    }

    private static long Now => Environment.TickCount64;

    private int ClientCount => _serving + _waiting.Count;

    /// <summary>Called by a signal handler's thread: the loop winds down.</summary>
    public void RequestStop(string signal)
    {
        _stopSignal = signal;
        Posix.Wake(_stopFd);
    }

    /// <summary>
    /// Starts a first worker that loads and initialises the module and waits until it has: a
    /// module that cannot be loaded or initialised is reported (by the worker) before the socket
    /// appears, and the broker exits. That worker is then let go (it finalises the module and
    /// exits) unless spares initialise ahead anyway, when it is the first spare.
    /// </summary>
    public bool StartFirstWorker()
    {
        var first = Spawn(initializeAhead: true);
        if (first is null) return false;
        Span<Libc.PollFd> fds = stackalloc Libc.PollFd[3];
        while (true)
        {
            int count = 0;
            fds[count++] = new() { Fd = _stopFd, Events = Libc.POLLIN };
            if (first.ControlFd >= 0) fds[count++] = new() { Fd = first.ControlFd, Events = Libc.POLLIN };
            if (first.PidFd >= 0) fds[count++] = new() { Fd = first.PidFd, Events = Libc.POLLIN };
            Libc.poll(fds, (nuint)count, first.PidFd >= 0 ? -1 : 200);
            if (_stopSignal is not null)
            {
                Libc.kill(first.Pid, Libc.SIGKILL);
                _stopping = true;
                Finish(first, Posix.Reap(first.Pid, block: true) ?? default);
                return false;
            }
            if (first.ControlFd >= 0 && fds[1].Revents != 0) ReadControl(first);
            if (first.State == WorkerState.Ready)
            {
                if (_settings.SpareWorkers == 0 || !_settings.InitializeAhead) Dismiss(first);
                return true;
            }
            // Ended before it was ready (its own message says why): the broker cannot serve.
            if (Posix.Reap(first.Pid, block: first.State == WorkerState.Lost) is { } report)
            {
                Finish(first, report);
                return false;
            }
        }
    }

    /// <summary>The loop on <paramref name="socket"/>: returns when a stop signal arrived and every worker has ended.</summary>
    public void Run(UnixListener socket)
    {
        _socket = socket;
        var fds = new List<Libc.PollFd>();
        var owners = new List<object>();
        while (true)
        {
            if (_stopSignal is not null && !_stopping) BeginShutdown();
            if (_stopping)
            {
                if (_workers.Count == 0) return;
                if (!_killedAll && Now >= _shutdownDeadline) KillAll();
            }
            Dispatch();
            _throttle.Flush();

            fds.Clear();
            owners.Clear();
            void Watch(int fd, short events, object owner)
            {
                fds.Add(new Libc.PollFd { Fd = fd, Events = events });
                owners.Add(owner);
            }
            Watch(_stopFd, Libc.POLLIN, this);
            if (!_stopping && Now >= _acceptPausedUntil && _socket.Fd >= 0)
                Watch(_socket.Fd, Libc.POLLIN, _socket);
            foreach (var pending in _pending)
                Watch(pending.Fd, Libc.POLLIN | PollReadHangUp, pending);
            bool pollWorkers = false;
            foreach (var worker in _workers.Values)
            {
                if (worker.ControlFd >= 0) Watch(worker.ControlFd, Libc.POLLIN, worker);
                if (worker.PidFd >= 0) Watch(worker.PidFd, Libc.POLLIN, worker.Watch ??= new PidWatch(worker));
                else pollWorkers = true;
            }

            int timeout = Timeout(pollWorkers);
            var array = System.Runtime.InteropServices.CollectionsMarshal.AsSpan(fds);
            int ready = Libc.poll(array, (nuint)array.Length, timeout);
            if (ready < 0 && Libc.LastError != Libc.EINTR)
            {
                _log.Error($"poll failed: {Libc.Describe(Libc.LastError)}");
                Thread.Sleep(100);
            }
            for (int i = 0; ready > 0 && i < array.Length; i++)
            {
                if (array[i].Revents == 0) continue;
                switch (owners[i])
                {
                    case Listener:
                        Posix.Drain(_stopFd);
                        break;
                    case UnixListener:
                        AcceptSome();
                        break;
                    case Pending pending:
                        ContinueHandshake(pending);
                        break;
                    case WorkerProcess worker:
                        if (worker.ControlFd >= 0) ReadControl(worker);
                        break;
                    case PidWatch watch:
                        if (_workers.ContainsKey(watch.Worker.Pid) && Posix.Reap(watch.Worker.Pid) is { } report)
                            Finish(watch.Worker, report);
                        break;
                }
            }
            if (pollWorkers)
                foreach (var worker in _workers.Values.Where(w => w.PidFd < 0).ToList())
                    if (Posix.Reap(worker.Pid) is { } report) Finish(worker, report);
            ExpireHandshakes();
            CheckMemory();
            CollectGarbage();
        }
    }

    /// <summary>Garbage the listener may leave uncollected (log lines and bookkeeping, about 1 KiB per client).</summary>
    private const long CollectEveryBytes = 1 << 20;
    private long _allocatedAtLastCollection;

    /// <summary>
    /// A gen0 collection after every MiB allocated: left to its own budget, which follows the CPU's
    /// cache size, the GC let a listener that had served a few thousand short clients sit at 20 MiB
    /// of garbage. A gen0 collection of this small heap takes well under a millisecond.
    /// </summary>
    private void CollectGarbage()
    {
        long allocated = GC.GetAllocatedBytesForCurrentThread();
        if (allocated - _allocatedAtLastCollection < CollectEveryBytes) return;
        _allocatedAtLastCollection = allocated;
        GC.Collect(0, GCCollectionMode.Forced, blocking: true);
    }

    private const short PollReadHangUp = 0x2000; // POLLRDHUP

    private int Timeout(bool pollWorkers)
    {
        long now = Now;
        long next = long.MaxValue;
        if (_pending.First is { } oldest) next = Math.Min(next, oldest.Value.Accepted + _settings.HandshakeTimeoutMilliseconds);
        if (_acceptPausedUntil > now) next = Math.Min(next, _acceptPausedUntil);
        if (_spawnPausedUntil > now && (_waiting.Count > 0 || _settings.SpareWorkers > 0)) next = Math.Min(next, _spawnPausedUntil);
        if (_settings.WorkerMemoryBytes > 0 && _workers.Count > 0) next = Math.Min(next, _nextMemoryCheck);
        if (_stopping && !_killedAll) next = Math.Min(next, _shutdownDeadline);
        next = Math.Min(next, _throttle.NextFlush);
        if (pollWorkers) next = Math.Min(next, now + 200); // no pidfd (kernel before 5.3): look every 200 ms
        if (next == long.MaxValue) return -1;
        return (int)Math.Clamp(next - now, 0, int.MaxValue);
    }

    // ---- accepting and the handshake ------------------------------------------------------------------------

    private void AcceptSome()
    {
        for (int i = 0; i < AcceptsPerPass; i++)
        {
            int fd = _socket.TryAccept(out int errno);
            if (fd >= 0)
            {
                _acceptBackoff = InitialBackoff;
                Admit(fd);
                continue;
            }
            if (errno == Libc.EAGAIN) return;
            if (errno == Libc.ECONNABORTED) continue;
            if (errno is Libc.EMFILE or Libc.ENFILE && _pending.First is { } oldest)
            {
                // Out of descriptors: the connection that has waited longest for its handshake
                // makes room (a real client sends its version byte at once).
                Close(oldest.Value, $" after {Now - oldest.Value.Accepted} ms without a version handshake, to make room: " +
                                    $"the open-file limit ({OpenFileLimit}) is reached", "make room");
                continue;
            }
            _throttle.Warn("accept", $"cannot accept a connection: {Libc.Describe(errno)}" +
                (errno is Libc.EMFILE or Libc.ENFILE ? $" (open-file limit {OpenFileLimit}, {_workers.Count} workers)" : "") +
                $"; retrying in {_acceptBackoff} ms");
            _acceptPausedUntil = Now + _acceptBackoff;
            _acceptBackoff = Math.Min(_acceptBackoff * 2, 1000);
            return;
        }
    }

    /// <summary>The soft open-file limit, for log lines (known at start: /proc cannot be read without a descriptor).</summary>
    private ulong OpenFileLimit => _settings.OpenFileLimit;

    private void Admit(int fd)
    {
        var peer = UnixListener.PeerOf(fd);
        if (peer is not { } credentials || !(_settings.AllowedUids.Contains(credentials.Uid) || _settings.AllowedGids.Contains(credentials.Gid)))
        {
            _throttle.Warn("refused", peer is { } p
                ? $"refused a connection from uid {p.Uid} gid {p.Gid} pid {p.Pid}: not allowed (see --allow-uid/--allow-gid)"
                : "refused a connection whose credentials could not be read");
            Libc.close(fd);
            return;
        }
        var pending = new Pending { Fd = fd, Peer = credentials, Serial = ++_serial, Accepted = Now };
        if (!TryHandshake(pending))
        {
            if (_pending.Count >= MaxPendingHandshakes && _pending.First is { } oldest)
                Close(oldest.Value, $" after {Now - oldest.Value.Accepted} ms without a version handshake, to make room: " +
                                    $"{MaxPendingHandshakes} connections are waiting for theirs", "make room");
            pending.Node = _pending.AddLast(pending);
        }
    }

    /// <summary>A connection waiting for its handshake became readable (its byte, or its end).</summary>
    private void ContinueHandshake(Pending pending)
    {
        if (pending.Node is null) return; // closed earlier in this pass
        if (TryHandshake(pending))
        {
            _pending.Remove(pending.Node);
            pending.Node = null;
        }
    }

    /// <summary>
    /// Reads the client's version byte if it has arrived and answers it: true when the connection
    /// is settled (queued for a worker, or closed), false when the byte has not come yet.
    /// </summary>
    private bool TryHandshake(Pending pending)
    {
        Span<byte> offered = stackalloc byte[1];
        nint got;
        while ((got = Libc.read(pending.Fd, offered, 1)) < 0 && Libc.LastError == Libc.EINTR) { }
        if (got < 0 && Libc.LastError == Libc.EAGAIN)
            return false;
        if (got <= 0)
        {
            _log.Trace($"connection {pending.Serial} (uid {pending.Peer.Uid}, pid {pending.Peer.Pid}) closed before its handshake");
            Libc.close(pending.Fd);
            return true;
        }
        if (ClientCount >= _settings.MaxClients)
        {
            // Refused before the answer: the client sees the connection end during the handshake.
            _throttle.Warn("max-clients", $"refused a connection from uid {pending.Peer.Uid} pid {pending.Peer.Pid}: " +
                                          $"{ClientCount} clients are connected, the most --max-clients allows");
            Libc.close(pending.Fd);
            return true;
        }
        byte version = Math.Min(offered[0], WireProfile.MaxVersion);
        ReadOnlySpan<byte> answer = [version];
        if (Libc.send(pending.Fd, answer, 1, Libc.MSG_NOSIGNAL | Libc.MSG_DONTWAIT) != 1)
        {
            _log.Trace($"connection {pending.Serial}: cannot answer the handshake; closed");
            Libc.close(pending.Fd);
            return true;
        }
        // The worker reads and writes it blocking, as every RpcChannel does.
        Libc.fcntl(pending.Fd, Libc.F_SETFL,
            Libc.fcntl(pending.Fd, Libc.F_GETFL, 0) & ~Libc.O_NONBLOCK);
        _waiting.AddLast(new Waiting { Fd = pending.Fd, Peer = pending.Peer, Serial = pending.Serial, Version = version, Since = Now });
        return true;
    }

    private void ExpireHandshakes()
    {
        long now = Now;
        while (_pending.First is { } oldest && now - oldest.Value.Accepted >= _settings.HandshakeTimeoutMilliseconds)
            Close(oldest.Value, $": no version handshake within {_settings.HandshakeTimeoutMilliseconds} ms (--handshake-timeout-ms)", "handshake timeout");
    }

    /// <summary>Closes a connection that has not sent its handshake; the log line is "closed the connection of uid U pid P" + <paramref name="why"/>.</summary>
    private void Close(Pending pending, string why, string kind)
    {
        if (pending.Node is not null) _pending.Remove(pending.Node);
        pending.Node = null;
        Libc.close(pending.Fd);
        _throttle.Warn(kind, $"closed the connection of uid {pending.Peer.Uid} pid {pending.Peer.Pid}{why}");
    }

    // ---- workers ---------------------------------------------------------------------------------------------------

    /// <summary>Hands waiting clients to ready workers and starts the workers still needed.</summary>
    private void Dispatch()
    {
        while (_waiting.First is { } next && TakeReadyWorker() is { } worker)
        {
            _waiting.RemoveFirst();
            if (!HandOff(next.Value, worker))
                _waiting.AddFirst(next.Value); // that worker was gone: the next one takes it
        }
        if (_stopping) return;
        int starting = 0, idle = 0;
        foreach (var w in _workers.Values)
        {
            if (w.State == WorkerState.Starting) { starting++; idle++; }
            else if (w.State == WorkerState.Ready) idle++;
        }
        int wanted = _waiting.Count + _settings.SpareWorkers - idle;
        while (wanted > 0 && starting < _maxConcurrentStarts && Now >= _spawnPausedUntil)
        {
            if (Spawn() is null) break;
            starting++;
            wanted--;
        }
    }

    private WorkerProcess? TakeReadyWorker()
    {
        WorkerProcess? oldest = null;
        foreach (var w in _workers.Values)
            if (w.State == WorkerState.Ready && (oldest is null || w.Ready < oldest.Ready))
                oldest = w;
        return oldest;
    }

    private WorkerProcess? Spawn(bool initializeAhead = false)
    {
        var (ours, theirs) = Posix.ControlPair();
        int pid;
        try
        {
            pid = Posix.Spawn(initializeAhead ? _initializingWorkerCommand : _workerCommand, theirs);
        }
        catch (BrokerException e)
        {
            Libc.close(ours);
            Libc.close(theirs);
            _spawnFailures++;
            _spawnPausedUntil = Now + SpawnBackoff();
            _throttle.Warn("spawn", $"{e.Message}; retrying in {SpawnBackoff()} ms");
            return null;
        }
        Libc.close(theirs);
        var worker = new WorkerProcess { Pid = pid, PidFd = Posix.PidFd(pid), ControlFd = ours, State = WorkerState.Starting, Spawned = Now };
        _workers[pid] = worker;
        return worker;
    }

    private int SpawnBackoff() => (int)Math.Min(100L << Math.Min(_spawnFailures, 10), 10_000);

    /// <summary>The worker's message on its control socket: it is ready, or the socket closed (it is ending).</summary>
    private void ReadControl(WorkerProcess worker)
    {
        Span<byte> buffer = stackalloc byte[HandOffMessage.MaxLength];
        int length = Posix.ReceiveMessage(worker.ControlFd, buffer, out int strayFd, out _);
        if (strayFd >= 0) Libc.close(strayFd);
        if (length > 0 && worker.State == WorkerState.Starting && HandOffMessage.TryDecode(buffer[..length], out WorkerReady ready))
        {
            worker.State = WorkerState.Ready;
            worker.Ready = Now;
            worker.ModuleStartMicroseconds = ready.StartMicroseconds;
            _spawnFailures = 0;
            _anyWorkerReady = true;
            _log.Trace($"worker pid {worker.Pid} ready in {worker.Ready - worker.Spawned} ms (module loaded in {ready.StartMicroseconds / 1000.0:0.0} ms)");
            return;
        }
        if (length > 0)
            _log.Error($"worker pid {worker.Pid} sent an unexpected control message ({length} bytes); stopping it");
        // End of stream or garbage: the worker is ending (its pidfd reports when) or is stopped.
        Libc.close(worker.ControlFd);
        worker.ControlFd = -1;
        if (worker.State is WorkerState.Starting or WorkerState.Ready)
        {
            worker.State = WorkerState.Lost;
            if (length > 0) Libc.kill(worker.Pid, Libc.SIGKILL);
        }
    }

    private bool HandOff(Waiting client, WorkerProcess worker)
    {
        Span<byte> message = stackalloc byte[HandOffMessage.MaxLength];
        int length = HandOffMessage.Encode(new ClientHandOff(client.Serial, client.Peer.Uid, client.Peer.Gid, client.Peer.Pid, client.Version), message);
        int errno = Posix.SendMessage(worker.ControlFd, message[..length], client.Fd);
        if (errno != 0)
        {
            // It died between getting ready and now: its exit is reported when it is reaped.
            _log.Warn($"worker pid {worker.Pid} could not take client {client.Serial}: {Libc.Describe(errno)}; trying another");
            Libc.close(worker.ControlFd);
            worker.ControlFd = -1;
            worker.State = WorkerState.Lost;
            return false;
        }
        Libc.close(client.Fd);
        Libc.close(worker.ControlFd);
        worker.ControlFd = -1;
        worker.State = WorkerState.Serving;
        worker.Client = client;
        long now = Now;
        worker.ServingSince = now;
        _serving++;
        _log.Info($"client {client.Serial} (uid {client.Peer.Uid}, gid {client.Peer.Gid}, pid {client.Peer.Pid}) served by worker pid {worker.Pid}" +
                  $" (started in {worker.Ready - worker.Spawned} ms, module loaded in {worker.ModuleStartMicroseconds / 1000.0:0.0} ms," +
                  $" ready {now - worker.Ready} ms before; client waited {now - client.Since} ms); {ClientCount} client{(ClientCount == 1 ? "" : "s")} connected");
        return true;
    }

    /// <summary>Lets an idle worker go: it sees its control socket close, finalises the module and exits.</summary>
    private void Dismiss(WorkerProcess worker)
    {
        if (worker.ControlFd >= 0) Libc.close(worker.ControlFd);
        worker.ControlFd = -1;
        worker.State = WorkerState.Dismissed;
    }

    /// <summary>A worker has been reaped: the log says how it ended and what it used.</summary>
    private void Finish(WorkerProcess worker, Posix.ExitReport report)
    {
        _workers.Remove(worker.Pid);
        if (worker.PidFd >= 0) Libc.close(worker.PidFd);
        if (worker.ControlFd >= 0) Libc.close(worker.ControlFd);
        worker.ControlFd = -1;
        long now = Now;
        string peak = $"peak RSS {report.PeakRssKib / 1024.0:0.0} MiB";
        switch (worker.State)
        {
            case WorkerState.Serving:
            {
                _serving--;
                var c = worker.Client!;
                string who = $"client {c.Serial} (uid {c.Peer.Uid}, pid {c.Peer.Pid})";
                string served = $"after {(now - worker.ServingSince) / 1000.0:0.0} s, {peak}; {ClientCount} client{(ClientCount == 1 ? "" : "s")} connected";
                if (worker.KilledForMemoryKib > 0)
                    _log.Error($"worker pid {worker.Pid} serving {who} was stopped over --worker-memory-mib " +
                               $"({worker.KilledForMemoryKib / 1024} MiB resident): {report.Describe()} {served}");
                else if (report.Signalled && !(worker.Terminated && report.Signal is Libc.SIGTERM or Libc.SIGKILL))
                    _log.Error($"worker pid {worker.Pid} serving {who} {report.Describe()} {served}; " +
                               "its client's calls in flight fail with CKR_DEVICE_ERROR and it reconnects to a fresh worker, other clients are not affected");
                else if (report.ExitCode != 0)
                    _log.Warn($"worker pid {worker.Pid} serving {who} {report.Describe()} {served}");
                else
                    _log.Info($"{who} left: worker pid {worker.Pid} exited {served}");
                break;
            }
            case WorkerState.Dismissed:
                _log.Trace($"idle worker pid {worker.Pid} {report.Describe()}");
                break;
            case WorkerState.Ready:
                _log.Warn($"idle worker pid {worker.Pid} {report.Describe()} ({peak}); another is started");
                break;
            default: // Starting or Lost before serving anyone
                if (_stopping) break;
                _spawnFailures++;
                _spawnPausedUntil = now + SpawnBackoff();
                if (worker.KilledForMemoryKib > 0)
                    _log.Error($"worker pid {worker.Pid} was stopped while starting: {worker.KilledForMemoryKib / 1024} MiB resident, over --worker-memory-mib");
                else
                    _log.Error($"worker pid {worker.Pid} could not start serving the module: it {report.Describe()} after {now - worker.Spawned} ms" +
                               (_anyWorkerReady ? $"; next attempt in {SpawnBackoff()} ms" : " (its message is above)"));
                if (_spawnFailures >= 5 && _waiting.Count > 0)
                {
                    foreach (var waiting in _waiting)
                    {
                        _log.Error($"closing the connection of client {waiting.Serial} (uid {waiting.Peer.Uid}, pid {waiting.Peer.Pid}): no worker could be started for it");
                        Libc.close(waiting.Fd);
                    }
                    _waiting.Clear();
                }
                break;
        }
    }

    /// <summary>Stops a worker whose resident memory is over --worker-memory-mib (RSS read from /proc every 100 ms).</summary>
    private void CheckMemory()
    {
        if (_settings.WorkerMemoryBytes <= 0 || Now < _nextMemoryCheck) return;
        _nextMemoryCheck = Now + MemoryCheckMilliseconds;
        long pageKib = Environment.SystemPageSize / 1024;
        foreach (var worker in _workers.Values)
        {
            if (worker.KilledForMemoryKib > 0) continue;
            var statm = Posix.ReadProcFile($"/proc/{worker.Pid}/statm");
            if (statm is null) continue;
            var fields = statm.Split(' ');
            if (fields.Length < 2 || !long.TryParse(fields[1], out long pages)) continue;
            long residentKib = pages * pageKib;
            if (residentKib * 1024 <= _settings.WorkerMemoryBytes) continue;
            Libc.kill(worker.Pid, Libc.SIGKILL);
            worker.KilledForMemoryKib = residentKib;
            string who = worker.Client is { } c ? $"serving client {c.Serial} (uid {c.Peer.Uid}, pid {c.Peer.Pid})" : "(idle)";
            _log.Error($"worker pid {worker.Pid} {who} uses {residentKib / 1024} MiB, over --worker-memory-mib " +
                       $"{_settings.WorkerMemoryBytes >> 20}: stopping it (its client's calls fail with CKR_DEVICE_ERROR)");
        }
    }

    // ---- shutdown ---------------------------------------------------------------------------------------------------

    private void BeginShutdown()
    {
        _stopping = true;
        _log.Info($"received {_stopSignal}, shutting down ({ClientCount} client{(ClientCount == 1 ? "" : "s")} connected)");
        _socket?.Dispose();
        foreach (var pending in _pending) Libc.close(pending.Fd);
        _pending.Clear();
        foreach (var waiting in _waiting) Libc.close(waiting.Fd);
        _waiting.Clear();
        foreach (var worker in _workers.Values)
        {
            worker.Terminated = true;
            Libc.kill(worker.Pid, Libc.SIGTERM);
        }
        _shutdownDeadline = Now + ShutdownGraceMilliseconds;
    }

    private void KillAll()
    {
        _killedAll = true;
        foreach (var worker in _workers.Values)
        {
            _log.Warn($"worker pid {worker.Pid} did not end within {ShutdownGraceMilliseconds} ms of SIGTERM; killing it");
            Libc.kill(worker.Pid, Libc.SIGKILL);
        }
    }
}
