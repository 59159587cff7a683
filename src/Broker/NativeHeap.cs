
namespace P11Proxy.Broker;

/// <summary>
/// How the C heap behaves in the broker process, which it shares with the backend module (and
/// its crypto library). Two needs pull apart:
/// <list type="bullet">
/// <item>Memory: glibc serves a block of 128 KiB or more with its own mmap and returns it to the
/// kernel when freed, but after freeing such a block it raises that threshold to the block's size
/// (up to 32 MiB); from then on large blocks come from the per-thread heaps, which keep freed
/// memory resident. Hostile clients on three connections asking for random buffers of up to
/// 16 MiB left the broker at 146 MiB RSS, 125 MiB of it in those heaps.</item>
/// <item>Speed: a block that is mmapped and unmapped on every call is faulted in page by page
/// every time. SoftHSM copies the data of each call (a 1 MiB digest makes 1 MiB blocks); with a
/// fixed 128 KiB threshold a 1 MiB digest through the broker took 5 ms instead of 1 ms.</item>
/// </list>
/// So the thresholds are fixed (no dynamic raise) at sizes that keep a call's ordinary working
/// set resident and send anything larger back to the kernel, and the number of heaps is capped,
/// which bounds what freed memory the heaps may keep: about <see cref="ArenaLimit"/> ×
/// <see cref="TrimThreshold"/>.
/// </summary>
internal static class NativeHeap
{
    /// <summary>Blocks from this size on are mmapped and returned when freed.</summary>
    public const int MmapThreshold = 2 << 20;

    /// <summary>Free memory at the top of a heap beyond this goes back to the kernel.</summary>
    public const int TrimThreshold = 4 << 20;

    /// <summary>Heaps glibc may create (it would make up to 8 per CPU for the broker's worker threads).</summary>
    public const int ArenaLimit = 2;

    /// <summary>Called before the module is loaded. A C library without these parameters ignores them.</summary>
    public static void KeepLargeBlocksOutOfThreadHeaps()
    {
        Libc.mallopt(Libc.M_MMAP_THRESHOLD, MmapThreshold);
        Libc.mallopt(Libc.M_TRIM_THRESHOLD, TrimThreshold);
        Libc.mallopt(Libc.M_ARENA_MAX, ArenaLimit);
    }
}
