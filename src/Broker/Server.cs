using P11Proxy.Wire;
using P11Proxy.Wire.Transport;

namespace P11Proxy.Broker;

/// <summary>
/// Serves the backend to the one client of this process: a worker's client, handed over by the
/// listener with its version handshake done (<see cref="Listener"/>, <see cref="WorkerMain"/>), or
/// the client on stdin/stdout. A client that sends garbage loses its connection, with a log line.
/// </summary>
internal sealed class Server
{
    private readonly Backend _backend;
    private readonly TokenFilter _filter;
    private readonly ProcessLog _log;

    /// <summary>Memory for large requests of this process's client (--request-memory-mib).</summary>
    public static FrameBudget RequestBudget { get; set; } = new(DefaultRequestMemory);

    public const long DefaultRequestMemory = 16L << 20;

    /// <summary>
    /// Large receive buffers shared by the connection's threads and capped in total: a thread that
    /// handled a large request gives its buffer back here, and the reader receiving the next large
    /// request takes it, so a client streaming large requests from several threads does not
    /// allocate (and fault in, page by page) a new buffer per request.
    /// </summary>
    public static readonly SpareBufferPool SpareBuffers = new(16 << 20);

    public Server(Backend backend, TokenFilter filter, ProcessLog log)
    {
        _backend = backend;
        _filter = filter;
        _log = log;
    }

    public void ServeStdio()
    {
        // stdout carries the protocol: nothing else may ever be written to it.
        using var channel = new RpcChannel(0, 1, isSocket: false) { Budget = RequestBudget, LargeBuffers = SpareBuffers };
        try
        {
            if (!channel.NegotiateAsServer(WireProfile.MaxVersion, out byte version))
                return;
            _log.Info($"stdio client connected, protocol version {version}");
            new ClientConnection(channel, "stdio client", WireProfile.For(version), _backend, _filter, _log).Run();
        }
        catch (TransportException e)
        {
            _log.Warn($"stdio client: {e.Message}; connection closed");
        }
    }

    /// <summary>
    /// Serves a client whose handshake the listener has answered, until it leaves;
    /// <paramref name="finished"/> runs when the last thread serving it is done.
    /// </summary>
    public void ServeHandedOver(RpcChannel channel, string name, byte version, Action finished)
    {
        new ClientConnection(channel, name, WireProfile.For(version), _backend, _filter, _log) { Finished = finished }.Run();
    }
}

/// <summary>
/// One client's connection. Requests are answered concurrently and as they finish, tagged with
/// the caller's call code, so a slow signature does not hold up another thread's small call.
/// One worker at a time is the reader. A request that is expected to be quick is handled by the
/// reader itself, straight from the receive buffer, and the reader then reads on: the common
/// one-call-at-a-time case costs one read, one write and no thread hand-off. Before handling a
/// request expected to take longer it hands the reader role to a parked worker (or starts one, up
/// to <see cref="MaxWorkers"/>), so requests arriving meanwhile are read and answered.
/// "Expected" is measured, not guessed: each call's duration on this connection feeds a moving
/// average (<see cref="CallDurations"/>), because waking a worker costs more than most token
/// calls do (an ECDSA signature, a digest of a few KiB), while an RSA signature or a 1 MiB digest
/// is worth running beside the next request. A call that may block for as long as it likes
/// (C_WaitForSlotEvent) is never run by the reader, from the first request of a connection on,
/// and its worker does not count against <see cref="MaxWorkers"/>: another thread's calls are
/// read and answered however many of the client's threads wait.
/// </summary>
internal sealed class ClientConnection
{
    private const int MaxWorkers = 8;

    private readonly RpcChannel _channel;
    private readonly string _name;
    private readonly WireProfile _profile;
    private readonly Backend _backend;
    private readonly TokenFilter _filter;
    private readonly ProcessLog _log;
    private readonly ClientState _client;
    private readonly CallDurations _durations = new();
    private readonly SlotEvents _events;
    private readonly object _park = new();
    private readonly Lock _writeLock = new();
    private int _workers;
    private int _parked;
    private bool _readerActive;
    private volatile bool _closing;

    /// <summary>Runs once the last thread serving the client has left (the connection is closed by then).</summary>
    public Action? Finished { get; init; }

    public ClientConnection(RpcChannel channel, string name, WireProfile profile, Backend backend, TokenFilter filter, ProcessLog log)
    {
        _channel = channel;
        _name = name;
        _profile = profile;
        _backend = backend;
        _filter = filter;
        _log = log;
        _client = new ClientState(name) { Profile = profile };
        _events = backend.Events(filter, log);
    }

    /// <summary>Serves until the client leaves; the calling thread is the first worker.</summary>
    public void Run()
    {
        Interlocked.Increment(ref _workers);
        Work();
    }

    private void Work()
    {
        var dispatcher = new Dispatcher(_backend, _filter, _client, _log, _profile);
        byte[] body = new byte[4096];
        bool isReader = false;
        try
        {
            while (true)
            {
                if (!isReader)
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
                    isReader = true;
                }

                if (!_channel.TryReceiveFrame(out uint code, out var frame))
                {
                    _log.Info($"{_name} disconnected");
                    Close();
                    break;
                }
                uint callId = frame.Length >= 4 ? System.Buffers.Binary.BinaryPrimitives.ReadUInt32BigEndian(frame.Span) : 0;
                bool mayBeOurs = Capabilities.ClientMayBeOurs(_channel.LastOptions); // decides the announcement at C_Initialize
                long reserved = _channel.TakeReservation();

                long now = System.Diagnostics.Stopwatch.GetTimestamp();
                // Read while another request runs: the client has several in flight. A thread that
                // waits for a slot event (NSS keeps one) does not make a client's calls overlap.
                if (Volatile.Read(ref _running) > Volatile.Read(ref _blocking))
                    Volatile.Write(ref _lastOverlap, now);
                // A call that may block always goes to another worker, up to the client's limit of
                // waiting threads; beyond it the reader runs it without letting it block.
                bool mayBlock = _durations.MayBlock(callId);
                bool handOver = mayBlock
                    ? Volatile.Read(ref _blocking) < SlotEvents.MaxWaitsPerClient
                    // A quick request is handled here even when the next one is already buffered
                    // (it follows right after): waking a worker costs more than the call saves.
                    : _durations.WorthHandingOver(callId) && (_channel.HasBufferedData || ClientOverlapsCalls(now));
                if (!handOver)
                {
                    // Still the reader: nobody touches the receive buffer, so the request is
                    // handled where it lies, then wiped there (requests may carry PINs).
                    try
                    {
                        dispatcher.MayBlock = false;
                        if (!HandleAndReply(dispatcher, callId, code, frame, mayBeOurs, now, byReader: true))
                            break;
                    }
                    finally
                    {
                        dispatcher.MayBlock = true;
                        RpcChannel.Wipe(frame);
                        Server.RequestBudget.Release(reserved);
                    }
                    continue;
                }

                // The next reader reuses the receive buffer: a small request is copied out, a
                // large one keeps the buffer it lies in and the channel continues with a spare.
                ReadOnlyMemory<byte> request;
                byte[]? owned = null;
                if (frame.Length >= SwapThreshold)
                {
                    owned = _channel.SwapReceiveBuffer();
                    request = frame;
                }
                else
                {
                    if (body.Length < frame.Length)
                        body = new byte[Math.Max(frame.Length, body.Length * 2)];
                    frame.Span.CopyTo(body);
                    RpcChannel.Wipe(frame);
                    request = new ReadOnlyMemory<byte>(body, 0, frame.Length);
                }
                // Counted before the role is released: the next reader sends without the write
                // lock only while no handed-over request can be sending.
                Interlocked.Increment(ref _running);
                if (mayBlock) Interlocked.Increment(ref _blocking);
                lock (_park)
                {
                    _readerActive = false;
                    if (_parked > 0) Monitor.Pulse(_park);
                    // Workers blocked in a wait do not count: the next request is read regardless.
                    else if (mayBlock || _workers - Volatile.Read(ref _blocking) < MaxWorkers) StartWorker();
                }
                isReader = false;
                try
                {
                    if (!HandleAndReply(dispatcher, callId, code, request, mayBeOurs, now, byReader: false))
                        break;
                }
                finally
                {
                    Interlocked.Decrement(ref _running);
                    if (mayBlock) BlockingCallDone();
                    RpcChannel.Wipe(request); // requests may carry PINs
                    if (owned is not null) Server.SpareBuffers.Keep(owned);
                    Server.RequestBudget.Release(reserved);
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
            if (isReader)
            {
                lock (_park)
                {
                    _readerActive = false;
                    Monitor.Pulse(_park);
                }
            }
            dispatcher.Dispose();
            if (Interlocked.Decrement(ref _workers) == 0)
            {
                // The last worker out releases what the client left behind.
                var cleanup = new Dispatcher(_backend, _filter, _client, _log, _profile);
                cleanup.CloseClientSessions();
                cleanup.Dispose();
                _channel.Dispose();
                Finished?.Invoke();
            }
        }
    }

    /// <summary>Requests from this size on are not copied out of the receive buffer (see <see cref="RpcChannel.SwapReceiveBuffer"/>).</summary>
    private const int SwapThreshold = 64 * 1024;

    /// <summary>Requests handed to a worker and not yet answered.</summary>
    private int _running;

    /// <summary>Of those, calls that may block (C_WaitForSlotEvent): their workers do not count against <see cref="MaxWorkers"/>.</summary>
    private int _blocking;

    private readonly object _blockingGate = new();

    private void BlockingCallDone()
    {
        Interlocked.Decrement(ref _blocking);
        lock (_blockingGate) Monitor.PulseAll(_blockingGate);
    }

    /// <summary>
    /// C_Finalize ended the client's waits: their replies (CKR_CRYPTOKI_NOT_INITIALIZED) go out
    /// before C_Finalize's, and C_Finalize's only once the client has read them: p11-kit's client
    /// (every version) asserts, and aborts its process, when C_Finalize closes its transport while
    /// another of its threads is still on its way out of a call. Bounded: a client that does not
    /// read cannot hold the reader here for long.
    /// </summary>
    private void AwaitBlockingReplies()
    {
        long until = Environment.TickCount64 + 5000;
        bool waited = false;
        lock (_blockingGate)
        {
            while (Volatile.Read(ref _blocking) > 0)
            {
                waited = true;
                long left = until - Environment.TickCount64;
                if (left <= 0) return;
                Monitor.Wait(_blockingGate, (int)left);
            }
        }
        if (!waited) return;
        _channel.AwaitPeerRead(1000);
        // Reading its reply is not the end of the call for p11-kit's client: the thread still
        // drops its reference to the transport after. A moment for it to do so.
        Thread.Sleep(PeerCallExitGrace);
    }

    private const int PeerCallExitGrace = 20; // ms

    /// <summary>When the client last had two requests in flight at once (Stopwatch ticks; 0: never).</summary>
    private long _lastOverlap;

    /// <summary>How long one sighting of overlapping requests keeps slow calls handed over.</summary>
    private static readonly long OverlapMemoryTicks = System.Diagnostics.Stopwatch.Frequency; // 1 s

    /// <summary>
    /// A hand-off only pays when another request may arrive while this one runs: a client that
    /// sends one call at a time (most do) never gains from it and would pay two thread switches
    /// per slow call.
    /// </summary>
    private bool ClientOverlapsCalls(long now)
    {
        long last = Volatile.Read(ref _lastOverlap);
        return last != 0 && now - last < OverlapMemoryTicks;
    }

    /// <summary>
    /// Handles one request, times it from <paramref name="started"/> (when it was received) and
    /// sends the reply; false when the connection must close.
    /// </summary>
    private bool HandleAndReply(Dispatcher dispatcher, uint callId, uint code, ReadOnlyMemory<byte> request, bool mayBeOurs,
        long started, bool byReader)
    {
        if (!dispatcher.Handle(request, mayBeOurs, out var reply))
        {
            Close();
            return false;
        }
        if (callId == (uint)RpcCallId.C_Finalize)
            AwaitBlockingReplies();
        long elapsed = System.Diagnostics.Stopwatch.GetTimestamp() - started;
        _durations.Record(callId, elapsed);
        // After a slow call the reader ran itself, look (before answering, so the answer cannot
        // have prompted it) whether the client sent more meanwhile: if so it overlaps its calls,
        // and the next slow one goes to another worker.
        if (elapsed > CallDurations.HandOverTicks && _durations.UsuallySlow(callId) &&
            Volatile.Read(ref _running) == Volatile.Read(ref _blocking) && _channel.InputWaiting())
            Volatile.Write(ref _lastOverlap, started + elapsed);
        // Only the reader hands requests to workers, and a worker counts in _running until its
        // reply is sent: the reader that sees none running is the only thread that can be sending.
        if (byReader && Volatile.Read(ref _running) == 0)
        {
            _channel.SendFrame(code, reply, dispatcher.ReplyOptions);
            return true;
        }
        lock (_writeLock)
            _channel.SendFrame(code, reply, dispatcher.ReplyOptions);
        return true;
    }

    /// <summary>Called with <see cref="_park"/> held.</summary>
    private void StartWorker()
    {
        Interlocked.Increment(ref _workers);
        new Thread(Work) { IsBackground = true, Name = _name }.Start();
    }

    /// <summary>Stops every worker: a reader blocked on the socket is woken by the shutdown, a worker waiting for a slot event by ending the client's waits.</summary>
    private void Close()
    {
        lock (_park)
        {
            _closing = true;
            Monitor.PulseAll(_park);
        }
        // Nothing of the client stays behind in the backend: its waits were never there (SlotEvents).
        if (_client.TakeEvents() is { } events) _events.Unsubscribe(events, Pkcs11.Pkcs11Constants.CKR_DEVICE_REMOVED);
        _channel.Shutdown();
    }
}

/// <summary>
/// How long each call took on one connection lately (a moving average per call id), to decide
/// whether the next one is worth a thread hand-off. Updated by whichever worker ran the call;
/// a lost update between two workers only blurs the average.
/// </summary>
internal sealed class CallDurations
{
    /// <summary>
    /// Calls expected to take longer than this run beside the next request. It also bounds how
    /// long a quick request can wait behind one handled by the reader (the mix benchmark's p99).
    /// </summary>
    public static readonly long HandOverTicks = System.Diagnostics.Stopwatch.Frequency / 10_000; // 100 µs

    private readonly long[] _average = new long[256];

    /// <summary>The rows' traits by call id (read per request: a flat array, no row lookup).</summary>
    private readonly CallTraits[] _traits = CallTable.TraitsById();

    private CallTraits TraitsOf(uint callId) => callId < (uint)_traits.Length ? _traits[callId] : CallTraits.None;

    /// <summary>Calls that may block for as long as they like (the row's <see cref="CallTraits.Blocking"/>): always run beside the reader.</summary>
    public bool MayBlock(uint callId) => (TraitsOf(callId) & CallTraits.Blocking) != 0 ||
        // --wait-for-token: C_OpenSession waits for a token that left (TokenWait)
        (_waitForToken && (RpcCallId)callId is RpcCallId.C_OpenSession);

    /// <summary>Read once: --wait-for-token is set at start-up, before any connection.</summary>
    private readonly bool _waitForToken = TokenWait.Current is not null;

    /// <summary>
    /// The calls that usually need the token's work or a person (rows not <see cref="CallTraits.Quick"/>):
    /// assumed slow until timed, and the only ones after which the reader looks for overlapping
    /// requests (a poll per call would otherwise be paid by quick calls whenever the machine is
    /// slow, e.g. under a profiler).
    /// </summary>
    public bool UsuallySlow(uint callId) => callId >= (uint)_traits.Length || (_traits[callId] & CallTraits.Quick) == 0;

    public bool WorthHandingOver(uint callId)
    {
        if (callId >= (uint)_average.Length) return false; // unknown id: refused by the dispatcher at once
        long average = Volatile.Read(ref _average[callId]);
        return average == 0 ? UsuallySlow(callId) : average > HandOverTicks;
    }

    public void Record(uint callId, long ticks)
    {
        if (callId >= (uint)_average.Length) return;
        ticks = Math.Max(ticks, 1);
        long average = Volatile.Read(ref _average[callId]);
        // Weight 1/4 for the newest: a token that turns slow is noticed within a few calls.
        Volatile.Write(ref _average[callId], average == 0 ? ticks : average + (ticks - average) / 4);
    }
}
