namespace P11Proxy.Wire.Transport;

/// <summary>
/// Memory that large incoming frames of all connections may hold at once. A frame from
/// <see cref="Threshold"/> bytes on is read only once its size is reserved; the reader waits
/// (the peer's send waits with it) while others hold the budget, and a frame that can never fit,
/// or that waited <see cref="WaitMilliseconds"/>, is refused. So a server's memory does not grow
/// with the number of clients sending large requests at once.
/// </summary>
public sealed class FrameBudget(long limit, int threshold = 1 << 20, int waitMilliseconds = 10_000)
{
    private readonly object _gate = new();
    private long _inUse;

    public long Limit => limit;
    public int Threshold => threshold;
    public int WaitMilliseconds => waitMilliseconds;

    public bool TryReserve(long bytes)
    {
        if (bytes > limit) return false;
        long deadline = Environment.TickCount64 + waitMilliseconds;
        lock (_gate)
        {
            while (_inUse + bytes > limit)
            {
                long remaining = deadline - Environment.TickCount64;
                if (remaining <= 0 || !Monitor.Wait(_gate, (int)remaining))
                    return false;
            }
            _inUse += bytes;
            return true;
        }
    }

    public void Release(long bytes)
    {
        if (bytes <= 0) return;
        lock (_gate)
        {
            _inUse -= bytes;
            Monitor.PulseAll(_gate);
        }
    }
}
