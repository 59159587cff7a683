using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Broker;

/// <summary>
/// Slot events of the backend, for every client at once. A module reports each event once per
/// process, to whichever thread asks first; clients of one broker share that process, so a
/// client's C_WaitForSlotEvent must never take the backend's event from the others, nor stay in
/// the module once the client has gone. Hence one thread (the pump) waits in the backend's
/// C_WaitForSlotEvent for all of them while any client waits, and each event it reports is given
/// to every initialised client: each sees what a process that loaded the module itself would see.
/// A client's wait is only a wait on its own queue, which C_Finalize and disconnecting end at once.
/// </summary>
internal sealed unsafe class SlotEvents(Backend backend, TokenFilter filter, ProcessLog log)
{
    /// <summary>Threads of one client that may wait at once (each holds a broker thread).</summary>
    public const int MaxWaitsPerClient = 32;

    private readonly object _gate = new();
    private readonly List<EventQueue> _queues = new();
    private bool _pumping;

    /// <summary>Incremented when the pump stops on an error; waits that saw it running get that error.</summary>
    private long _pumpStops;
    private ulong _pumpError;

    /// <summary>A client initialised: from now on it is given every event.</summary>
    public EventQueue Subscribe(string peer)
    {
        var queue = new EventQueue(peer);
        lock (_gate) _queues.Add(queue);
        return queue;
    }

    /// <summary>A client finalised or left: its waits end with <paramref name="rv"/>, its queue is dropped.</summary>
    public void Unsubscribe(EventQueue queue, ulong rv)
    {
        lock (_gate)
        {
            queue.Ended = rv;
            _queues.Remove(queue);
            Monitor.PulseAll(_gate);
        }
    }

    /// <summary>
    /// C_WaitForSlotEvent for one client: its oldest pending event, or (CKF_DONT_BLOCK) CKR_NO_EVENT,
    /// or a wait for the next one. <paramref name="mayBlock"/> false: the caller cannot spare a thread.
    /// </summary>
    public ulong Wait(EventQueue queue, ulong flags, bool mayBlock, out nuint slot)
    {
        slot = 0;
        bool dontBlock = (flags & CKF_DONT_BLOCK) != 0;
        lock (_gate)
        {
            if (queue.Ended != CKR_OK) return queue.Ended;
            if (queue.TryTake(out slot)) return CKR_OK;
            if (dontBlock && _pumping) return CKR_NO_EVENT; // the pump is in the backend: nothing new there
        }
        if (dontBlock)
            return Probe(queue, flags, out slot);
        lock (_gate)
        {
            if (!mayBlock || queue.Waiting >= MaxWaitsPerClient)
            {
                log.Warn($"{queue.Peer}: refused a C_WaitForSlotEvent: {MaxWaitsPerClient} threads of this client wait already; CKR_FUNCTION_FAILED");
                return CKR_FUNCTION_FAILED;
            }
            queue.Waiting++;
            try
            {
                if (!_pumping) StartPump();
                long stops = _pumpStops;
                while (true)
                {
                    if (queue.Ended != CKR_OK) return queue.Ended;
                    if (queue.TryTake(out slot)) return CKR_OK;
                    if (_pumpStops != stops) return _pumpError;
                    Monitor.Wait(_gate);
                }
            }
            finally
            {
                queue.Waiting--;
            }
        }
    }

    /// <summary>A CKF_DONT_BLOCK wait while no thread waits in the backend: asked of the backend now.</summary>
    private ulong Probe(EventQueue queue, ulong flags, out nuint slot)
    {
        while (true)
        {
            nuint found = 0;
            ulong rv = backend.Functions->C_WaitForSlotEvent((nuint)flags, &found, null);
            lock (_gate)
            {
                if (rv == CKR_OK) Deliver(found);
                if (queue.Ended != CKR_OK) { slot = 0; return queue.Ended; }
                if (queue.TryTake(out slot)) return CKR_OK;
                if (rv != CKR_OK) return rv;
            }
            // An event on a hidden slot: none for this client; ask again as direct would report the next.
        }
    }

    /// <summary>Called under the gate.</summary>
    private void StartPump()
    {
        _pumping = true;
        new Thread(Pump) { IsBackground = true, Name = "slot events" }.Start();
    }

    private void Pump()
    {
        while (true)
        {
            nuint slot = 0;
            ulong rv = backend.Functions->C_WaitForSlotEvent(0, &slot, null);
            lock (_gate)
            {
                if (rv == CKR_OK)
                {
                    Deliver(slot);
                    // Nobody waits for more: the backend keeps later events until someone asks. A
                    // waiting thread with an event in its queue is served already (it has not woken
                    // yet): pumping on for it would take the backend's next event early, and a
                    // CKF_DONT_BLOCK call meanwhile would see CKR_NO_EVENT where direct sees the event.
                    if (_queues.Any(q => q.Waiting > q.Pending)) continue;
                    _pumping = false;
                    return;
                }
                // CKR_FUNCTION_NOT_SUPPORTED (SoftHSM), CKR_CRYPTOKI_NOT_INITIALIZED (the broker is
                // stopping), or a failure: every wait that is on gets it, as a direct caller would.
                if (rv != CKR_CRYPTOKI_NOT_INITIALIZED && rv != CKR_FUNCTION_NOT_SUPPORTED)
                    log.Warn($"the module's C_WaitForSlotEvent failed: {Pkcs11Names.ReturnValue(rv) ?? rv.ToString("x")}");
                _pumpError = rv;
                _pumpStops++;
                _pumping = false;
                Monitor.PulseAll(_gate);
                return;
            }
        }
    }

    /// <summary>An event for every initialised client (hidden slots are no client's business). Called under the gate.</summary>
    private void Deliver(nuint slot)
    {
        if (!filter.IsVisible(backend.Functions, slot)) return;
        foreach (var queue in _queues) queue.Add(slot);
        Monitor.PulseAll(_gate);
    }
}

/// <summary>One client's slot events not yet taken, oldest first (a slot at most once), and its waits. Used under the gate.</summary>
internal sealed class EventQueue(string peer)
{
    private readonly List<nuint> _pending = new();

    public string Peer { get; } = peer;
    public int Waiting;

    /// <summary>Not CKR_OK once the client finalised or left: what its waits return.</summary>
    public ulong Ended = CKR_OK;

    /// <summary>Events not yet taken.</summary>
    public int Pending => _pending.Count;

    public void Add(nuint slot)
    {
        if (!_pending.Contains(slot)) _pending.Add(slot);
    }

    public bool TryTake(out nuint slot)
    {
        slot = 0;
        if (_pending.Count == 0) return false;
        slot = _pending[0];
        _pending.RemoveAt(0);
        return true;
    }
}
