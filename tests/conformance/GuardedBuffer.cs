using System.Runtime.InteropServices;

namespace P11Proxy.HostileBroker;

/// <summary>
/// Caller memory for the module to write into, of exactly the size the caller declares, ending
/// where an inaccessible page begins: a write one byte past it faults, and the fault (SIGSEGV,
/// or the NativeAOT runtime's fail-fast for a fault in its own code) ends the test run, so no
/// overflow can pass unnoticed however far it reaches. The rest of the first page, below the
/// buffer, and the buffer itself start filled with <see cref="Canary"/>, so writes before the
/// buffer, or into the part of it the module did not report filling, show as changed bytes.
/// </summary>
internal sealed unsafe partial class GuardedBuffer : IDisposable
{
    public const byte Canary = 0xA5;

    private const int PROT_NONE = 0, PROT_READ = 1, PROT_WRITE = 2;
    private const int MAP_PRIVATE = 0x02, MAP_ANONYMOUS = 0x20;

    [LibraryImport("libc", SetLastError = true)]
    private static partial nint mmap(nint address, nuint length, int protection, int flags, int fd, nint offset);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int mprotect(nint address, nuint length, int protection);

    [LibraryImport("libc", SetLastError = true)]
    private static partial int munmap(nint address, nuint length);

    private readonly nint _mapping;
    private readonly nuint _mappingLength;
    private int _disposed;

    /// <summary><paramref name="size"/> bytes; 0 gives a buffer whose first byte is already the guard page.</summary>
    public GuardedBuffer(int size)
    {
        ArgumentOutOfRangeException.ThrowIfNegative(size);
        int page = Environment.SystemPageSize;
        // At least one accessible page, so the gap below the buffer exists to be checked.
        int dataPages = Math.Max(1, (size + page - 1) / page);
        _mappingLength = (nuint)((dataPages + 1) * page);
        _mapping = mmap(0, _mappingLength, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (_mapping == -1)
            throw new InvalidOperationException($"mmap of {_mappingLength} bytes failed: errno {Marshal.GetLastPInvokeError()}");
        GuardPage = _mapping + dataPages * page;
        if (mprotect(GuardPage, (nuint)page, PROT_NONE) != 0)
        {
            int errno = Marshal.GetLastPInvokeError();
            munmap(_mapping, _mappingLength);
            throw new InvalidOperationException($"mprotect of the guard page failed: errno {errno}");
        }
        Size = size;
        Pointer = GuardPage - size;
        new Span<byte>((void*)_mapping, (int)(GuardPage - _mapping)).Fill(Canary);
    }

    /// <summary>What the module is given: <see cref="Size"/> bytes, the last one right below <see cref="GuardPage"/>.</summary>
    public nint Pointer { get; }

    public int Size { get; }

    /// <summary>The first inaccessible byte: <see cref="Pointer"/> + <see cref="Size"/>.</summary>
    public nint GuardPage { get; }

    public Span<byte> Bytes => new((void*)Pointer, Size);

    /// <summary>A CK_ULONG (64 bits on LP64) at element <paramref name="index"/>.</summary>
    public ulong ULong(int index) => ((ulong*)Pointer)[index];

    public void SetULong(int index, ulong value) => ((ulong*)Pointer)[index] = value;

    public ulong[] ULongs(int count) => new ReadOnlySpan<ulong>((void*)Pointer, count).ToArray();

    /// <summary>Bytes from <paramref name="offset"/> to the end still hold the canary: the module wrote nothing there.</summary>
    public void AssertUnwritten(int offset, string what)
    {
        AssertBelowUntouched(what);
        var bytes = Bytes;
        for (int i = offset; i < bytes.Length; i++)
            Assert.That(bytes[i], Is.EqualTo(Canary), $"{what}: byte {i} of {Size} (from {offset} on nothing was to be written) was written");
    }

    /// <summary>The page area below the buffer still holds the canary: nothing was written before the buffer.</summary>
    public void AssertBelowUntouched(string what)
    {
        var below = new ReadOnlySpan<byte>((void*)_mapping, (int)(Pointer - _mapping));
        int changed = below.IndexOfAnyExcept(Canary);
        Assert.That(changed, Is.EqualTo(-1), $"{what}: a byte {below.Length - changed} before the buffer was written");
    }

    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) == 0)
            munmap(_mapping, _mappingLength);
    }
}
