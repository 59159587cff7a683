using System.Runtime.InteropServices;

namespace P11Proxy.Broker;

/// <summary>
/// Native memory for one call's arguments: zeroed on allocation (modules must not see stale
/// bytes, and a partly filled output struct must not leak them), wiped and freed after the call.
/// </summary>
internal sealed unsafe class NativeArena : IDisposable
{
    /// <summary>
    /// Bytes all arenas together may hold in large output buffers at once. Whatever clients ask
    /// for (up to the frame limit each), the broker's memory stays bounded; a request beyond the
    /// budget gets CKR_DEVICE_MEMORY instead of a bigger broker.
    /// </summary>
    public const long LargeBudget = 32L << 20;

    /// <summary>Allocations from this size on count against <see cref="LargeBudget"/>.</summary>
    public const nuint LargeThreshold = 64 * 1024;

    private static long _largeInUse;

    private readonly List<(nint Pointer, nuint Size)> _blocks = new();
    private long _largeReserved;

    /// <summary>A zeroed block, or null when a large one would exceed the broker-wide budget.</summary>
    public void* TryAllocLarge(nuint size)
    {
        if (size < LargeThreshold)
            return Alloc(size);
        if (Interlocked.Add(ref _largeInUse, (long)size) > LargeBudget)
        {
            Interlocked.Add(ref _largeInUse, -(long)size);
            return null;
        }
        _largeReserved += (long)size;
        return Alloc(size);
    }

    public void* Alloc(nuint size)
    {
        var pointer = NativeMemory.AllocZeroed(size == 0 ? 1 : size);
        _blocks.Add(((nint)pointer, size == 0 ? 1 : size));
        return pointer;
    }

    public T* Alloc<T>(int count = 1) where T : unmanaged => (T*)Alloc((nuint)(sizeof(T) * Math.Max(count, 1)));

    public byte* Copy(ReadOnlySpan<byte> data)
    {
        var pointer = (byte*)Alloc((nuint)data.Length);
        data.CopyTo(new Span<byte>(pointer, data.Length));
        return pointer;
    }

    /// <summary>Wipes and frees everything (buffers may have held PINs, plaintext or key values).</summary>
    public void Reset()
    {
        foreach (var (pointer, size) in _blocks)
        {
            NativeMemory.Clear((void*)pointer, size);
            NativeMemory.Free((void*)pointer);
        }
        _blocks.Clear();
        if (_largeReserved != 0)
        {
            Interlocked.Add(ref _largeInUse, -_largeReserved);
            _largeReserved = 0;
        }
    }

    public void Dispose() => Reset();
}
