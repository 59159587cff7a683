namespace P11Proxy.Wire.Edge;

/// <summary>
/// Memory the broker may spend at once on large call outputs of all clients together: random
/// bytes, ciphertexts, signatures, wrapped keys, attribute values. A client chooses their size
/// (C_GenerateRandom allocates what it names; a value it stored can be read back on every
/// connection at once), so without a bound a few cheap requests make the broker as large as the
/// clients like. Calls wait for each other's outputs to be done; an output that can never fit, or
/// that waited too long, gets CKR_DEVICE_MEMORY, and the broker stays the size it was.
/// </summary>
public static class OutputBudget
{
    /// <summary>Allocations from this size on count against the budget; smaller ones are noise.</summary>
    public const long LargeThreshold = 64 * 1024;

    /// <summary>
    /// The default, <c>--output-memory-mib 8</c>: 4 MiB for one call's output, far above what
    /// signatures, keys and certificates need. The reply buffer a connection grows for an output
    /// stays with the connection, so this also bounds what each connection keeps: with it a
    /// broker serving SoftHSM stays under 64 MiB peak RSS while hostile clients on several
    /// connections ask for the largest outputs they can (native-tests/18 and 19 check this).
    /// </summary>
    public const long DefaultBytes = 8L << 20;

    /// <summary>
    /// What an output of N bytes costs while its call runs: the buffer the module fills, and its
    /// copy encoded into the reply.
    /// </summary>
    public const int CopiesPerOutput = 2;

    /// <summary>
    /// How long a call waits for others to give back budget before it is refused. Reservations
    /// last while the module computes an output and the reply is encoded, so a wait is normally
    /// as long as another client's large call; this bounds it when the token itself is stuck.
    /// </summary>
    public const int WaitLimitMilliseconds = 10_000;

    private static readonly object Gate = new();
    private static long _inUse;

    /// <summary>The budget in bytes; set once at start-up from <c>--output-memory-mib</c>.</summary>
    public static long Bytes { get; set; } = DefaultBytes;

    /// <summary>Largest single output that can fit at all.</summary>
    public static long LargestOutput => Bytes / CopiesPerOutput;

    /// <summary>What reserving an output of <paramref name="size"/> bytes takes from the budget.</summary>
    public static long CostOf(nuint size) => (long)size * CopiesPerOutput;

    /// <summary>
    /// Takes <see cref="CostOf"/>(size) from the budget, waiting while other calls hold what it
    /// needs, so clients asking at the same time are served one after the other instead of
    /// refused. False, with nothing taken, for an output larger than <see cref="LargestOutput"/>
    /// or after <see cref="WaitLimitMilliseconds"/>.
    /// </summary>
    public static bool TryReserve(nuint size)
    {
        if (size > (nuint)LargestOutput)
            return false;
        long cost = CostOf(size);
        long deadline = Environment.TickCount64 + WaitLimitMilliseconds;
        lock (Gate)
        {
            while (_inUse + cost > Bytes)
            {
                long left = deadline - Environment.TickCount64;
                if (left <= 0)
                    return false;
                Monitor.Wait(Gate, (int)left);
            }
            _inUse += cost;
            return true;
        }
    }

    /// <summary>Gives back what <see cref="TryReserve"/> took, once the call's buffers are freed.</summary>
    public static void Release(long cost)
    {
        lock (Gate)
        {
            _inUse -= cost;
            Monitor.PulseAll(Gate);
        }
    }
}
