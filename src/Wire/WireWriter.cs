using System.Buffers;
using System.Buffers.Binary;

namespace P11Proxy.Wire;

/// <summary>
/// Growable big-endian output buffer for p11-kit RPC messages. The first <see cref="HeaderReserve"/>
/// bytes are kept free so the transport can put the 12-byte frame header in front of the body
/// and send header + body with a single system call.
/// </summary>
public sealed class WireWriter : IDisposable
{
    /// <summary>Room for the frame header (call code, options length, body length).</summary>
    public const int HeaderReserve = FrameHeader.Size;

    /// <summary>p11-kit refuses byte arrays of 0x7fffffff bytes or more; so do we.</summary>
    public const uint MaxArrayLength = 0x7ffffffe;

    /// <summary>Buffers up to this size come from and go back to the shared pool; larger ones are allocated to size.</summary>
    private const int PooledLimit = 1 << 20;

    /// <summary>A large buffer is let go after this many messages in a row that needed far less.</summary>
    private const int LargeBufferPatience = 8;

    private readonly int _initialSize;
    private byte[] _buffer;
    private int _position;
    private int _smallMessages;

    public WireWriter(int initialCapacity = 256)
    {
        _initialSize = Math.Max(initialCapacity, 64) + HeaderReserve;
        _buffer = ArrayPool<byte>.Shared.Rent(_initialSize);
        _position = HeaderReserve;
    }

    /// <summary>Set when a value could not be encoded (too long, wrong size); the message must not be sent.</summary>
    public bool Failed { get; private set; }

    /// <summary>Length of the body written so far (without the reserved header).</summary>
    public int Length => _position - HeaderReserve;

    /// <summary>The body written so far.</summary>
    public ReadOnlySpan<byte> Body => _buffer.AsSpan(HeaderReserve, Length);

    /// <summary>Reserved header followed by the body: what the transport sends once it filled the header.</summary>
    public Span<byte> FrameWithHeader => _buffer.AsSpan(0, _position);

    public void Reset()
    {
        if (_buffer.Length > PooledLimit)
        {
            // Kept while large messages keep coming (a 1 MiB digest loop must not reallocate each
            // time); let go once they stop, so one large message does not pin its buffer for good.
            _smallMessages = _position <= _buffer.Length / 4 ? _smallMessages + 1 : 0;
            if (_smallMessages >= LargeBufferPatience)
            {
                var large = _buffer;
                _buffer = ArrayPool<byte>.Shared.Rent(_initialSize);
                Release(large, _position);
                _smallMessages = 0;
            }
        }
        _position = HeaderReserve;
        Failed = false;
    }

    public void Fail() => Failed = true;

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    private Span<byte> Grow(int count)
    {
        if (_buffer.Length - _position >= count)
        {
            var room = _buffer.AsSpan(_position, count);
            _position += count;
            return room;
        }
        return GrowSlow(count);
    }

    private Span<byte> GrowSlow(int count)
    {
        {
            long wanted = Math.Max((long)_buffer.Length * 2, (long)_position + count);
            if (wanted > Array.MaxLength)
                wanted = Array.MaxLength;
            if (wanted - _position < count)
            {
                Failed = true;
                return Span<byte>.Empty;
            }
            // Above the pool's sizes exactly what is needed: the pool would round 4 MiB + 1 up to 8 MiB.
            var bigger = wanted <= PooledLimit ? ArrayPool<byte>.Shared.Rent((int)wanted) : GC.AllocateUninitializedArray<byte>((int)wanted);
            _buffer.AsSpan(0, _position).CopyTo(bigger);
            Release(_buffer, _position);
            _buffer = bigger;
        }
        var span = _buffer.AsSpan(_position, count);
        _position += count;
        return span;
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public void WriteByte(byte value)
    {
        var span = Grow(1);
        if (!span.IsEmpty) span[0] = value;
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public void WriteUInt32(uint value)
    {
        var span = Grow(4);
        if (!span.IsEmpty) BinaryPrimitives.WriteUInt32BigEndian(span, value);
    }

    /// <summary>A CK_ULONG travels as 64 bits, high word first, whatever the host's long size.</summary>
    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public void WriteUInt64(ulong value)
    {
        var span = Grow(8);
        if (!span.IsEmpty) BinaryPrimitives.WriteUInt64BigEndian(span, value);
    }

    /// <summary>Length-prefixed bytes.</summary>
    public void WriteByteArray(ReadOnlySpan<byte> data)
    {
        if ((ulong)data.Length > MaxArrayLength)
        {
            Failed = true;
            return;
        }
        WriteUInt32((uint)data.Length);
        var span = Grow(data.Length);
        if (!span.IsEmpty || data.IsEmpty) data.CopyTo(span);
    }

    /// <summary>The NULL byte array: a length of 0xffffffff and no data.</summary>
    public void WriteNullByteArray() => WriteUInt32(0xffffffff);

    public void WriteBytes(ReadOnlySpan<byte> data)
    {
        var span = Grow(data.Length);
        if (!span.IsEmpty || data.IsEmpty) data.CopyTo(span);
    }

    /// <summary>Overwrites a big-endian 32-bit value written earlier (counts known only afterwards).</summary>
    public void PatchUInt32(int bodyOffset, uint value) =>
        BinaryPrimitives.WriteUInt32BigEndian(_buffer.AsSpan(HeaderReserve + bodyOffset, 4), value);

    public void Dispose()
    {
        var buffer = _buffer;
        int used = _position;
        _buffer = Array.Empty<byte>();
        _position = 0;
        if (buffer.Length > 0)
            Release(buffer, used);
    }

    /// <summary>Wipes what was written (it may hold PINs or key material) and gives pool-sized buffers back.</summary>
    private static void Release(byte[] buffer, int used)
    {
        Array.Clear(buffer, 0, Math.Min(used, buffer.Length));
        if (buffer.Length <= PooledLimit)
            ArrayPool<byte>.Shared.Return(buffer);
    }
}
