using System.Runtime.InteropServices;

namespace P11Proxy.Broker;

/// <summary>
/// Native memory for one call's arguments: zeroed on allocation (modules must not see stale
/// bytes, and a partly filled output struct must not leak them), wiped and freed after the call.
/// </summary>
internal sealed unsafe class NativeArena : IDisposable
{
    private readonly List<(nint Pointer, nuint Size)> _blocks = new();

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
    }

    public void Dispose() => Reset();
}
