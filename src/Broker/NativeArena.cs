using System.Runtime.InteropServices;

namespace P11Proxy.Broker;

/// <summary>
/// Native memory for one call's arguments: zeroed on allocation (modules must not see stale
/// bytes, and a partly filled output struct must not leak them), wiped and freed after the call.
/// </summary>
internal sealed unsafe class NativeArena : IDisposable
{
    /// <summary>Allocations from this size on count against the <see cref="OutputBudget"/>.</summary>
    public const nuint LargeThreshold = (nuint)OutputBudget.LargeThreshold;

    private readonly List<(nint Pointer, nuint Size)> _blocks = new();
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
            OutputBudget.Release(_largeReserved);
            _largeReserved = 0;
        }
        RefusedOutput = 0;
    }

    public void Dispose() => Reset();
}
