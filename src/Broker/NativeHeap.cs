using System.Runtime.InteropServices;

namespace P11Proxy.Broker;

/// <summary>
/// How the C heap behaves in the broker process, which it shares with the backend module (and
/// its crypto library). glibc serves a block of 128 KiB or more with its own mmap and returns it
/// to the kernel when freed, but after freeing such a block it raises that threshold to the
/// block's size (up to 32 MiB). From then on large blocks come from the per-thread heaps, which
/// keep freed memory resident: hostile clients on three connections asking for random buffers of
/// up to 16 MiB left the broker at 146 MiB RSS, 125 MiB of it in those heaps. Fixing the threshold keeps large
/// call buffers (ours and the module's copies of them) out of those heaps.
/// </summary>
internal static partial class NativeHeap
{
    /// <summary>glibc's own starting threshold; fixing it turns off the dynamic raise.</summary>
    public const int MmapThreshold = 128 * 1024;

    private const int M_TRIM_THRESHOLD = -1;
    private const int M_MMAP_THRESHOLD = -3;

    [LibraryImport("libc")]
    private static partial int mallopt(int parameter, int value);

    /// <summary>
    /// Fixes both thresholds at glibc's defaults. The broker is built for glibc (linux-x64); a C
    /// library without these parameters ignores them.
    /// </summary>
    public static void KeepLargeBlocksOutOfThreadHeaps()
    {
        mallopt(M_MMAP_THRESHOLD, MmapThreshold);
        // Trimming the heap top from the same size on, as glibc does before it adapts: memory
        // freed at the top of the main heap goes back too.
        mallopt(M_TRIM_THRESHOLD, MmapThreshold);
    }
}
