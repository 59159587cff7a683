using System.Runtime.InteropServices;
using static P11Proxy.Platform.Libc;

namespace P11Proxy.Module;

/// <summary>
/// Reads memory a caller points at when the pointer itself may be garbage (C_Initialize's
/// pReserved): through the kernel, which answers EFAULT for an unmapped or inaccessible byte, never
/// by dereferencing it, since a fault in the module's own code ends the host process.
/// </summary>
internal static unsafe class CallerMemory
{
    /// <summary>
    /// The NUL-terminated bytes at <paramref name="address"/>, NUL included, if every one of them
    /// is readable and the NUL comes within <paramref name="max"/> bytes; read a page at a time, so
    /// nothing beyond the page that holds the NUL is touched.
    /// </summary>
    public static bool TryCopyString(void* address, int max, out byte[] bytes)
    {
        bytes = [];
        var copy = new byte[max];
        int page = Environment.SystemPageSize;
        int copied = 0;
        fixed (byte* destination = copy)
        {
            while (copied < max)
            {
                nuint at = (nuint)address + (nuint)copied;
                int chunk = (int)Math.Min((nuint)(max - copied), (nuint)page - at % (nuint)page);
                if (!TryCopy((void*)at, destination + copied, chunk))
                    return false;
                int nul = new ReadOnlySpan<byte>(destination + copied, chunk).IndexOf((byte)0);
                if (nul >= 0)
                {
                    bytes = copy[..(copied + nul + 1)];
                    return true;
                }
                copied += chunk;
            }
        }
        return false;
    }

    /// <summary>Copies <paramref name="length"/> bytes that lie within one page; false when they cannot be read.</summary>
    private static bool TryCopy(void* source, byte* destination, int length)
    {
        var local = new IoVector { Base = destination, Length = (nuint)length };
        var remote = new IoVector { Base = source, Length = (nuint)length };
        nint got = process_vm_readv(getpid(), &local, 1, &remote, 1, 0);
        if (got == length) return true;
        if (got >= 0 || Marshal.GetLastPInvokeError() == EFAULT) return false;
        // process_vm_readv refused by policy (a seccomp filter, say): a pipe does the same check,
        // write(2) answering EFAULT for bytes the process cannot read.
        Span<int> fds = stackalloc int[2];
        if (pipe2(fds, O_CLOEXEC) != 0) return false;
        try
        {
            if (write(fds[1], source, (nuint)length) != length) return false;
            return read(fds[0], destination, (nuint)length) == length;
        }
        finally
        {
            close(fds[0]);
            close(fds[1]);
        }
    }
}
