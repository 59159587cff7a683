using P11Proxy.Wire;
using P11Proxy.Wire.Transport;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// The module's link to the broker. Connection model: one connection per C_Initialize, shared by
/// all host threads (sessions live on the broker side of that connection, so connections cannot
/// simply be pooled). Unlike p11-kit's client, which serialises calls, several threads may have
/// requests in flight at once: each request carries a fresh call code, the broker answers in any
/// order, and a reply is handed only to the thread waiting for its code, so replies never cross
/// and a quick call is not held up behind another thread's slow signature. Frames are sent under
/// a write lock in one system call; one waiting thread at a time reads (leader/follower), and a
/// reply wakes only the thread it is for.
/// </summary>
internal sealed partial class Connection : IDisposable
{
    [System.Runtime.InteropServices.LibraryImport("libc")]
    private static partial uint getuid();

    private readonly Lock _writeGate = new();
    private readonly Lock _gate = new();
    private readonly WaiterTable _waiters = new();
    private int _timedWaiters;
    private bool _reading;
    private readonly RpcChannel _channel;
    private readonly SpawnedProcess? _child;
    private uint _nextCode = 0x0f;
    private bool _broken;

    /// <summary>
    /// Set by C_Finalize before it closes the connection: a call still waiting then (a thread in
    /// C_WaitForSlotEvent) returns CKR_CRYPTOKI_NOT_INITIALIZED, as PKCS#11 has C_Finalize end such
    /// a wait, not CKR_DEVICE_ERROR.
    /// </summary>
    private bool _finalized;

    /// <summary>What a call cut short by the connection's end returns.</summary>
    private ulong Ended => Volatile.Read(ref _finalized) ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_DEVICE_ERROR;

    private readonly int _timeoutMilliseconds;

    private Connection(RpcChannel channel, SpawnedProcess? child, WireProfile profile, string address, int timeoutMilliseconds)
    {
        _timeoutMilliseconds = timeoutMilliseconds;
        _channel = channel;
        _child = child;
        Profile = profile;
        Address = address;
    }

    /// <summary>What the broker speaks; set before the connection is published (typed message parameters at C_Initialize).</summary>
    public WireProfile Profile { get; private set; }
    public string Address { get; }

    /// <summary>The broker announced typed message parameters in its C_Initialize reply (see <see cref="Capabilities"/>).</summary>
    public void UseTypedMessageParameters() => Profile = Profile.WithTypedMessageParameters(true);

    /// <summary>The mechanisms of the sessions' message-based encryption and decryption.</summary>
    public MessageOperations Messages { get; } = new();

    /// <summary>
    /// Session handles given to the caller carry the connection's generation in their top byte once
    /// the module had to reconnect, so a handle from before the broker was lost can never name a
    /// session of the new connection, even when the new broker reuses the number. Generation 0
    /// (no reconnection yet) passes handles through unchanged.
    /// </summary>
    public ulong Generation { get; private set; }

    /// <summary>Set once, before the connection is published to other threads.</summary>
    public void AssignGeneration(ulong generation) => Generation = generation;

    private const int GenerationShift = 56;

    public bool TryToBroker(nuint callerHandle, out nuint brokerHandle)
    {
        brokerHandle = callerHandle;
        if (Generation == 0) return true;
        if (((ulong)callerHandle >> GenerationShift) != Generation) return false;
        brokerHandle = (nuint)((ulong)callerHandle & ((1UL << GenerationShift) - 1));
        return true;
    }

    public bool TryToCaller(nuint brokerHandle, out nuint callerHandle)
    {
        callerHandle = brokerHandle;
        if (Generation == 0) return true;
        if (((ulong)brokerHandle >> GenerationShift) != 0) return false;
        callerHandle = (nuint)((ulong)brokerHandle | (Generation << GenerationShift));
        return true;
    }

    public bool Broken => Volatile.Read(ref _broken);

    /// <summary>Whether the peer is our broker: 0 not known yet, 1 it is, 2 it is not (see Remote.PeerIsOurBroker).</summary>
    public int PeerKind;

    /// <summary>
    /// Connects and negotiates the highest protocol version both sides speak, offering at most
    /// <paramref name="offeredVersion"/>. A broker on a unix socket must run as this user, root or
    /// <paramref name="brokerUid"/> (<see cref="BrokerPeer"/>): nothing is sent to any other.
    /// </summary>
    public static Connection Open(ServerAddress address, int timeoutMilliseconds, byte offeredVersion, uint? brokerUid = null)
    {
        var (channel, child) = OpenChannel(address, brokerUid);
        channel.ReceiveTimeoutMilliseconds = timeoutMilliseconds;
        byte version;
        try
        {
            version = channel.NegotiateAsClient(offeredVersion);
        }
        catch (TransportException)
        {
            // Servers too old to negotiate close the connection on a non-zero version byte:
            // reconnect and offer version 0, as p11-kit's client does.
            Close(channel, child);
            (channel, child) = OpenChannel(address, brokerUid);
            channel.ReceiveTimeoutMilliseconds = timeoutMilliseconds;
            try
            {
                version = channel.NegotiateAsClient(0);
            }
            catch (TransportException)
            {
                Close(channel, child);
                throw;
            }
        }
        Log.Trace($"connected to {address} with protocol version {version}");
        return new Connection(channel, child, WireProfile.For(version), address.ToString(), timeoutMilliseconds);
    }

    private static (RpcChannel, SpawnedProcess?) OpenChannel(ServerAddress address, uint? brokerUid)
    {
        switch (address.Kind)
        {
            case AddressKind.UnixSocket:
                var socket = RpcChannel.ConnectUnix(address.Path);
                try
                {
                    BrokerPeer.Check(socket.ReadFd, getuid(), brokerUid, address.Path, ModuleConfig.BrokerUidHint);
                }
                catch
                {
                    socket.Dispose();
                    throw;
                }
                return (socket, null);
            case AddressKind.Command:
                var child = SpawnedProcess.Start(address.Arguments);
                return (child.Channel, child);
            default:
                return (VSock.Connect(address.Cid, address.Port), null);
        }
    }

    private static void Close(RpcChannel channel, SpawnedProcess? child)
    {
        if (child is not null) child.Dispose();
        else channel.Dispose();
    }

    /// <summary>
    /// Sends the request in <paramref name="context"/> and leaves the parsed reply in its reader.
    /// Returns CKR_OK, the CK_RV of an error reply, or CKR_DEVICE_ERROR / CKR_DEVICE_REMOVED when the
    /// broker misbehaves or is gone.
    /// </summary>
    public ulong Exchange(CallContext context) => Exchange(context, -1);

    /// <summary>As <see cref="Exchange(CallContext)"/>, giving up after <paramref name="maxWaitMilliseconds"/> (-1: the configured timeout).</summary>
    public ulong Exchange(CallContext context, int maxWaitMilliseconds)
    {
        var request = context.Request;
        var call = request.Call!;
        if (!request.Complete)
        {
            Log.Error($"{call.Name}: request could not be encoded");
            return CKR_HOST_MEMORY;
        }
        if (Volatile.Read(ref _broken))
            return Volatile.Read(ref _finalized) ? CKR_CRYPTOKI_NOT_INITIALIZED : CKR_DEVICE_REMOVED;

        bool timed = !call.NoTimeout;
        long deadline = maxWaitMilliseconds < 0 ? long.MaxValue : Environment.TickCount64 + maxWaitMilliseconds;
        uint code = NextCode();
        var waiter = context.Waiter;
        waiter.Done = false;
        int readTimeout;
        lock (_gate)
        {
            // Registered before the request leaves: another thread's read may bring the reply.
            _waiters.Add(code, waiter);
            if (timed) _timedWaiters++;
            // With no reader, this thread will be it: claimed now, one pass through the gate less.
            readTimeout = TryClaimReader(deadline);
        }
        try
        {
            lock (_writeGate)
                _channel.SendFrame(code, request.Writer);
        }
        catch (TransportException e)
        {
            if (readTimeout != 0) ReleaseReader();
            Forget(code, timed);
            return Fail(call, e.Message);
        }

        ulong rv = AwaitReply(code, waiter, call, timed, deadline, readTimeout);
        if (rv != CKR_OK)
            return rv;

        var reply = context.Response;
        var status = reply.Parse(context.ReplyBody, MessageKind.Response);
        if (status != ParseStatus.Ok)
        {
            Log.Error($"{call.Name}: malformed reply from the broker ({status})");
            return CKR_DEVICE_ERROR;
        }
        if (reply.IsError)
        {
            // A server never reports success through an error reply; 0 there is a protocol fault.
            if (reply.ErrorCode == CKR_OK)
            {
                Log.Error($"{call.Name}: error reply without an error code");
                return CKR_DEVICE_ERROR;
            }
            return reply.ErrorCode;
        }
        if (reply.Call!.Id != call.Id)
        {
            Log.Error($"{call.Name}: the broker answered {reply.Call.Name}");
            return CKR_DEVICE_ERROR;
        }
        return CKR_OK;
    }

    private ulong Fail(RpcCall call, string why)
    {
        if (Volatile.Read(ref _finalized))
            return CKR_CRYPTOKI_NOT_INITIALIZED; // closed by C_Finalize: nothing was lost
        if (!Volatile.Read(ref _broken))
            Log.Error($"{call.Name}: lost the broker at {Address}: {why}");
        Volatile.Write(ref _broken, true);
        WakeAll();
        return CKR_DEVICE_ERROR;
    }

    /// <summary>Wakes every waiting thread (the connection failed or is closing: each finds out and leaves).</summary>
    private void WakeAll()
    {
        lock (_gate)
            for (int i = 0; i < _waiters.Count; i++)
                _waiters.At(i).Wake.Set();
    }

    private uint NextCode()
    {
        while (true)
        {
            uint code = Interlocked.Increment(ref _nextCode);
            if (code >= 0x10) return code; // wrapped past 0xffffffff: skip the reserved low codes
        }
    }

    private void Forget(uint code, bool timed)
    {
        lock (_gate)
            RemoveWaiter(code, timed);
    }

    /// <summary>
    /// A thread waiting for the reply tagged with its call code; one per thread, reused across its
    /// calls. Its event is set when its reply was delivered, when the reader role is handed to it,
    /// or when the connection fails. It never spins: on two cores a spinning waiter takes the CPU
    /// the reader or the broker needs.
    /// </summary>
    internal sealed class Waiter(CallContext context)
    {
        public readonly CallContext Context = context;
        public readonly ManualResetEventSlim Wake = new(false, spinCount: 0);
        public bool Done;
    }

    /// <summary>
    /// Several host threads may be waiting on one connection. Whoever finds no reader becomes the
    /// reader (leader/follower): it receives frames and hands each to the thread whose call code it
    /// carries, waking that thread only, until its own arrives; then it hands the reader role to one
    /// thread still waiting. A reply with an unknown code is a broken broker. The reader waits at
    /// most the configured timeout while any timed call is pending. <paramref name="readTimeout"/>
    /// is non-zero when the caller already holds the reader role.
    /// </summary>
    private ulong AwaitReply(uint code, Waiter waiter, RpcCall call, bool timed, long deadline, int readTimeout)
    {
        while (true)
        {
            if (readTimeout == 0)
            {
                long remaining;
                lock (_gate)
                {
                    if (waiter.Done)
                    {
                        // Delivered by another thread's read.
                        RemoveWaiter(code, timed);
                        return CKR_OK;
                    }
                    remaining = deadline - Environment.TickCount64;
                    if (Volatile.Read(ref _broken) || remaining <= 0)
                    {
                        RemoveWaiter(code, timed);
                        return Ended;
                    }
                    readTimeout = TryClaimReader(deadline);
                    if (readTimeout == 0)
                        waiter.Wake.Reset(); // under the gate: a wake-up given after this point is not lost
                }
                if (readTimeout == 0)
                {
                    waiter.Wake.Wait((int)Math.Min(remaining, int.MaxValue));
                    continue;
                }
            }

            string? failure = ReceiveOne(readTimeout, waiter, code, timed, out bool ownReply);
            if (ownReply)
                return CKR_OK;
            if (failure is not null)
            {
                ReleaseReader();
                Forget(code, timed);
                return Fail(call, failure);
            }
            // Another thread's reply: give up the role for a moment, so the gate sees a fresh state.
            ReleaseReader();
            readTimeout = 0;
        }
    }

    /// <summary>
    /// Takes the reader role if nobody holds it; returns the receive timeout to use (-1: none),
    /// or 0 when another thread is reading. Called under the gate.
    /// </summary>
    private int TryClaimReader(long deadline)
    {
        if (_reading || Volatile.Read(ref _broken))
            return 0;
        _reading = true;
        int timeout = _timedWaiters > 0 ? _timeoutMilliseconds : -1;
        if (deadline != long.MaxValue)
        {
            long remaining = Math.Max(deadline - Environment.TickCount64, 1);
            timeout = timeout < 0 ? (int)Math.Min(remaining, int.MaxValue) : (int)Math.Min(timeout, remaining);
        }
        return timeout == 0 ? 1 : timeout;
    }

    private void ReleaseReader()
    {
        lock (_gate)
        {
            _reading = false;
            HandReaderRole();
        }
    }

    /// <summary>Called under the gate.</summary>
    private void RemoveWaiter(uint code, bool timed)
    {
        _waiters.Remove(code);
        if (timed) _timedWaiters--;
        // A thread handed the reader role may leave without reading (its deadline passed):
        // then another waiting thread must take the role, or it would wait for ever.
        if (!_reading) HandReaderRole();
    }

    /// <summary>The reader role is free: one thread still waiting for its reply becomes the reader. Called under the gate.</summary>
    private void HandReaderRole()
    {
        for (int i = 0; i < _waiters.Count; i++)
        {
            var other = _waiters.At(i);
            if (!other.Done)
            {
                other.Wake.Set();
                return;
            }
        }
    }

    /// <summary>
    /// Receives one frame and gives it to its waiter; returns why the connection failed, if it did.
    /// When the frame is the reader's own reply, the reader leaves in the same pass through the
    /// gate: role released, its entry removed (<paramref name="ownReply"/>).
    /// </summary>
    private string? ReceiveOne(int timeoutMilliseconds, Waiter reader, uint readerCode, bool readerTimed, out bool ownReply)
    {
        ownReply = false;
        try
        {
            _channel.ReceiveTimeoutMilliseconds = timeoutMilliseconds < 0 ? -1 : timeoutMilliseconds;
            if (!_channel.TryReceiveFrame(out uint replyCode, out var body))
                return "the broker closed the connection";
            lock (_gate)
            {
                // Copied under the gate: a waiter that gave up must not find its buffers rewritten.
                if (!_waiters.TryGet(replyCode, out var target))
                    return $"reply tagged {replyCode}, which no call is waiting for";
                target.Context.KeepReply(body.Span, _channel.LastOptions);
                // Wiped while this thread still holds the reader role: once it is handed on, the
                // next reader may receive into the same bytes.
                RpcChannel.Wipe(body); // replies may carry key values or plaintext
                target.Done = true;
                if (target != reader)
                {
                    target.Wake.Set();
                }
                else
                {
                    ownReply = true;
                    _reading = false;
                    _waiters.Remove(readerCode);
                    if (readerTimed) _timedWaiters--;
                    HandReaderRole();
                }
            }
            return null;
        }
        catch (TransportException e)
        {
            return e.Message;
        }
    }

    /// <summary>
    /// Sends C_Finalize if the connection is free within <paramref name="waitMilliseconds"/>, then
    /// closes it. A call stalled on a silent broker is woken (it fails) instead of blocking
    /// C_Finalize for ever.
    /// </summary>
    public ulong FinalizeAndClose(CallContext context, int waitMilliseconds)
    {
        ulong rv = Volatile.Read(ref _broken) ? CKR_OK : Exchange(context, waitMilliseconds);
        // Our broker answered the client's waits before this reply; any call still waiting (a
        // broker that did not, or could not) is woken by the close and returns as C_Finalize dictates.
        Volatile.Write(ref _finalized, true);
        Dispose();
        return rv;
    }

    /// <summary>Wakes any thread blocked on the broker, waits for it to leave, then releases the connection.</summary>
    public void Dispose()
    {
        Volatile.Write(ref _broken, true); // from here on no thread takes the reader role
        bool busy;
        lock (_gate)
            busy = _reading;
        if (!busy && _writeGate.TryEnter())
            _writeGate.Exit();
        else
            busy = true; // a thread may be blocked writing to a server that does not read
        if (_child is null)
            _channel.Shutdown();
        else if (busy)
            _child.Shutdown(); // a pipe cannot be shut down: the child is asked to stop instead
        // Otherwise a spawned server is left to see end-of-file when the pipes close below and to
        // exit by itself, finalizing the module it serves (as p11-kit lets its remotes do).
        // Wait until no thread is reading or writing before the descriptors are closed (the
        // shutdown above makes a blocked reader return at once).
        WakeAll();
        while (true)
        {
            lock (_gate)
                if (!_reading) break;
            Thread.Sleep(1);
        }
        lock (_writeGate)
            Close(_channel, _child);
    }
}

/// <summary>
/// The calls waiting on one connection, by call code. A handful at most (one per host thread in
/// a call), so a short array searched in order beats a hash table. Used under the connection's gate.
/// </summary>
internal sealed class WaiterTable
{
    private uint[] _codes = new uint[8];
    private Connection.Waiter[] _waiters = new Connection.Waiter[8];

    public int Count { get; private set; }

    public Connection.Waiter At(int index) => _waiters[index];

    public void Add(uint code, Connection.Waiter waiter)
    {
        if (Count == _codes.Length)
        {
            Array.Resize(ref _codes, Count * 2);
            Array.Resize(ref _waiters, Count * 2);
        }
        _codes[Count] = code;
        // A removed entry's slot keeps its (long-lived, per-thread) waiter: a thread calling
        // alone finds itself already there and stores nothing (no GC write barrier).
        if (!ReferenceEquals(_waiters[Count], waiter)) _waiters[Count] = waiter;
        Count++;
    }

    public bool TryGet(uint code, out Connection.Waiter waiter)
    {
        for (int i = 0; i < Count; i++)
        {
            if (_codes[i] == code)
            {
                waiter = _waiters[i];
                return true;
            }
        }
        waiter = null!;
        return false;
    }

    public void Remove(uint code)
    {
        for (int i = 0; i < Count; i++)
        {
            if (_codes[i] != code) continue;
            Count--;
            if (i != Count)
            {
                (_waiters[i], _waiters[Count]) = (_waiters[Count], _waiters[i]);
                _codes[i] = _codes[Count];
            }
            return;
        }
    }
}

/// <summary>Per-thread message buffers, reused across calls so the hot path does not allocate.</summary>
internal sealed class CallContext
{
    [ThreadStatic] private static CallContext? _current;

    private byte[] _reply = new byte[4096];
    private int _replyLength;

    public CallContext() => Waiter = new Connection.Waiter(this);

    /// <summary>This thread's context, if it made a call before.</summary>
    public static CallContext? Current => _current;

    /// <summary>Attribute values fetched ahead by this thread's last size query.</summary>
    public AttributePrefetch Prefetch { get; } = new();

    /// <summary>This thread's place in a connection's table of waiting calls.</summary>
    public Connection.Waiter Waiter { get; }

    public RpcMessageWriter Request { get; } = new(WireProfile.V0);
    public RpcMessageReader Response { get; } = new(WireProfile.V0);

    public ReadOnlyMemory<byte> ReplyBody => new(_reply, 0, _replyLength);

    public static CallContext For(Connection connection, RpcCallId id)
    {
        var context = _current ??= new CallContext();
        // Values prefetched by a size query serve only the very next call of this thread.
        if (context.Prefetch.Holding) context.Prefetch.Drop();
        var profile = connection.Profile;
        if (!ReferenceEquals(context.Request.Profile, profile))
        {
            context.Request.Profile = profile;
            context.Response.Profile = profile;
        }
        context.Request.Begin(CallTable.Get(id), MessageKind.Request);
        return context;
    }

    public void KeepReply(ReadOnlySpan<byte> body, ReadOnlySpan<byte> options)
    {
        if (_reply.Length < body.Length)
            _reply = new byte[Math.Max(body.Length, _reply.Length * 2)];
        body.CopyTo(_reply);
        _replyLength = body.Length;
        // Options come only with the broker's C_Initialize reply (its capabilities); p11-kit sends
        // none. Stored only when there are some or were some: the usual reply stores no reference.
        if (!options.IsEmpty || ReplyOptions.Length != 0) ReplyOptions = options.ToArray();
    }

    /// <summary>The options field of the last reply (empty unless the peer put something there).</summary>
    public byte[] ReplyOptions { get; private set; } = [];

    /// <summary>Wipes buffers that may have held a PIN or secret.</summary>
    public void Scrub()
    {
        Array.Clear(_reply, 0, _replyLength);
        _replyLength = 0;
        Request.Writer.Reset();
    }
}
