using System.Runtime.InteropServices;

namespace P11Proxy.Wire.Edge;

/// <summary>
/// Native memory for one call's arguments: zeroed on allocation (modules must not see stale
/// bytes, and a partly filled output struct must not leak them), wiped and freed after the call.
/// Small allocations come from one block kept across calls (a bump pointer, wiped after each
/// call, so it is zero again for the next), larger ones from the C heap; large inputs are not
/// copied at all but pinned where the request lies.
/// </summary>
public sealed unsafe class NativeArena : IDisposable
{
    /// <summary>Allocations from this size on count against the <see cref="OutputBudget"/>.</summary>
    public const nuint LargeThreshold = (nuint)OutputBudget.LargeThreshold;

    private const int BlockSize = 16 * 1024;

    private readonly List<(nint Pointer, nuint Size)> _blocks = new();
    private readonly List<System.Buffers.MemoryHandle> _pins = new();
    private byte* _block;
    private int _blockUsed;
    private long _largeReserved;

    /// <summary>
    /// A zeroed output buffer, or null when a large one does not fit the <see cref="OutputBudget"/>
    /// (then <see cref="RefusedOutput"/> says how large it was).
    /// </summary>
    public void* TryAllocLarge(nuint size) => TryReserveLarge(size) ? Alloc(size) : null;

    /// <summary>
    /// Reserves budget for outputs of <paramref name="size"/> bytes in all that this call will
    /// allocate with <see cref="Alloc"/> (several buffers that together are large); false when
    /// they do not fit. Released by <see cref="Reset"/>.
    /// </summary>
    public bool TryReserveLarge(nuint size)
    {
        if (size < LargeThreshold)
            return true;
        if (!OutputBudget.TryReserve(size))
        {
            RefusedOutput = size;
            return false;
        }
        _largeReserved += OutputBudget.CostOf(size);
        return true;
    }

    /// <summary>Size of the last output this call was refused for lack of budget; 0 when none was.</summary>
    public nuint RefusedOutput { get; private set; }

    public void* Alloc(nuint size)
    {
        // 16-byte alignment, as malloc gives: arguments may be structures of any kind.
        nuint rounded = (size + 15) & ~(nuint)15;
        if (rounded == 0) rounded = 16;
        if (rounded <= (nuint)(BlockSize - _blockUsed))
        {
            if (_block == null)
            {
                _block = (byte*)NativeMemory.AlignedAlloc(BlockSize, 16);
                NativeMemory.Clear(_block, BlockSize); // from here on the wipe after each call keeps it zero
            }
            var slice = _block + _blockUsed;
            _blockUsed += (int)rounded;
            return slice;
        }
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

    /// <summary>
    /// A pointer to <paramref name="data"/> where it lies (pinned until <see cref="Reset"/>), for
    /// large inputs the backend only reads: a 1 MiB digest is not copied once more.
    /// </summary>
    public byte* Pin(ReadOnlyMemory<byte> data)
    {
        var handle = data.Pin();
        _pins.Add(handle);
        return (byte*)handle.Pointer;
    }

    /// <summary>Wipes and frees everything (buffers may have held PINs, plaintext or key values).</summary>
    public void Reset()
    {
        if (_blockUsed != 0)
        {
            NativeMemory.Clear(_block, (nuint)_blockUsed);
            _blockUsed = 0;
        }
        foreach (var pin in _pins)
            pin.Dispose();
        _pins.Clear();
        foreach (var (pointer, size) in _blocks)
        {
            NativeMemory.Clear((void*)pointer, size);
            NativeMemory.Free((void*)pointer);
        }
        _blocks.Clear();
        if (_largeReserved != 0)
        {
            OutputBudget.Release(_largeReserved);
            _largeReserved = 0;
        }
        RefusedOutput = 0;
    }

    public void Dispose()
    {
        Reset();
        if (_block != null)
        {
            NativeMemory.AlignedFree(_block);
            _block = null;
        }
    }
}
