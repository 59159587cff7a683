using System.Diagnostics;
using System.Runtime.InteropServices;

namespace P11Proxy.HostileBroker;

/// <summary>
/// The guard behind every buffer <see cref="HostileBrokerTests"/> hands the module, shown to catch
/// what it is there for: the buffer's last byte can be written, the byte after it cannot, and a
/// process writing that one byte dies with SIGSEGV.
/// </summary>
[TestFixture]
public sealed unsafe partial class GuardedBufferTests
{
    private const int EFAULT = 14, SIGSEGV = 11, SIGKILL = 9, SIGCHLD = 17, WNOHANG = 1, RLIMIT_CORE = 4;

    /// <summary>clone(2) on x86-64 (the only target the project builds): with just SIGCHLD it is fork(2).</summary>
    private const long SysClone = 56;

    [LibraryImport("libc", SetLastError = true)]
    private static partial int pipe(int* fds);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint read(int fd, nint buffer, nuint count);

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint write(int fd, byte* buffer, nuint count);

    [LibraryImport("libc")]
    private static partial int close(int fd);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int waitpid(int pid, int* status, int options);

    [LibraryImport("libc")]
    private static partial int kill(int pid, int signal);

    [Test]
    public void LastByteWritable_ByteAfterItIsNot()
    {
        foreach (int size in new[] { 1, 13, 4096, 4097 })
        {
            using var buffer = new GuardedBuffer(size);
            Assert.That(buffer.GuardPage, Is.EqualTo(buffer.Pointer + size), $"{size} bytes: the guard page follows the last byte");
            Assert.That((long)buffer.GuardPage % Environment.SystemPageSize, Is.EqualTo(0L), $"{size} bytes: the guard is a whole page");
            // The kernel copies into the address for read(2) from a pipe, and says EFAULT where it may not write.
            Assert.That(KernelWriteErrno(buffer.Pointer + size - 1), Is.Zero, $"{size} bytes: the last byte is writable");
            Assert.That(KernelWriteErrno(buffer.Pointer + size), Is.EqualTo(EFAULT), $"{size} bytes: the byte after the last is not");
            Assert.That(KernelWriteErrno(buffer.GuardPage + Environment.SystemPageSize - 1), Is.EqualTo(EFAULT), $"{size} bytes: nor the end of the guard page");
        }
    }

    [Test]
    public void ChildWritingOneBytePastTheEnd_DiesWithSigsegv()
    {
        Assert.That(RuntimeInformation.ProcessArchitecture, Is.EqualTo(Architecture.X64), "clone(2) is called by its x86-64 number");
        using var buffer = new GuardedBuffer(13);
        Assert.That(ChildWritingOneByte(buffer.Pointer + 12), Is.EqualTo("exited with status 0"), "a write to the last byte");
        Assert.That(ChildWritingOneByte(buffer.Pointer + 13), Is.EqualTo($"killed by signal {SIGSEGV}"), "a write one byte past the end");
        Assert.That(buffer.Bytes[12], Is.EqualTo(GuardedBuffer.Canary), "the child's write stayed in the child's copy");
    }

    /// <summary>0 when the kernel could store one byte at <paramref name="address"/>, else its errno.</summary>
    private static int KernelWriteErrno(nint address)
    {
        int* fds = stackalloc int[2];
        Assert.That(pipe(fds), Is.Zero, "pipe");
        try
        {
            byte one = 0x5A;
            Assert.That(write(fds[1], &one, 1), Is.EqualTo((nint)1), "write to the pipe");
            return read(fds[0], address, 1) == 1 ? 0 : Marshal.GetLastPInvokeError();
        }
        finally
        {
            close(fds[0]);
            close(fds[1]);
        }
    }

    /// <summary>
    /// Forks; the child stores one byte at <paramref name="address"/> with memset (a store in C,
    /// as the module's would be, not one the .NET runtime would turn into an exception) and exits 0
    /// if it survives. The child has only this thread of the test host, so it calls nothing that
    /// could wait for the runtime's other threads: all it runs is resolved before the fork, and the
    /// C functions are called without a GC transition.
    /// </summary>
    private static string ChildWritingOneByte(nint address)
    {
        nint libc = NativeLibrary.Load("libc.so.6");
        var syscall = (delegate* unmanaged[SuppressGCTransition]<long, long, long, long, long, long, long>)NativeLibrary.GetExport(libc, "syscall");
        var memset = (delegate* unmanaged[SuppressGCTransition]<nint, int, nuint, nint>)NativeLibrary.GetExport(libc, "memset");
        var setrlimit = (delegate* unmanaged[SuppressGCTransition]<int, ulong*, int>)NativeLibrary.GetExport(libc, "setrlimit");
        var exit = (delegate* unmanaged[SuppressGCTransition]<int, void>)NativeLibrary.GetExport(libc, "_exit");
        ulong* noCore = stackalloc ulong[2] { 0, 0 };

        long pid = syscall(SysClone, SIGCHLD, 0, 0, 0, 0);
        if (pid == 0)
        {
            setrlimit(RLIMIT_CORE, noCore); // the expected crash leaves no core file behind
            memset(address, 0x5A, 1);
            exit(0);
        }
        Assert.That(pid, Is.GreaterThan(0L), "clone(2) failed");

        // Bounded so a child that hangs fails the test instead of the run.
        int status = 0;
        var waited = Stopwatch.StartNew();
        while (waitpid((int)pid, &status, WNOHANG) == 0)
        {
            if (waited.Elapsed > TimeSpan.FromSeconds(30))
            {
                kill((int)pid, SIGKILL);
                waitpid((int)pid, &status, 0);
                Assert.Fail("the child neither exited nor died within 30 s");
            }
            Thread.Sleep(5);
        }
        int signal = status & 0x7f;
        return signal == 0 ? $"exited with status {(status >> 8) & 0xff}" : $"killed by signal {signal}";
    }
}
