using System.Buffers.Binary;

namespace P11Proxy.Wire;

/// <summary>
/// Bounds-checked big-endian reader over one received message body. Every read checks the
/// remaining length first; nothing is allocated from a length the peer sent.
/// </summary>
public sealed class WireReader
{
    // The message as array, offset and length: reading the array directly spares the per-read
    // cost of Memory.Span, and a reader reset over the same buffer stores no new reference.
    private byte[] _array = [];
    private int _offset;
    private int _length;
    private int _position;

    public WireReader() { }

    public WireReader(ReadOnlyMemory<byte> data) => Reset(data);

    public void Reset(ReadOnlyMemory<byte> data)
    {
        if (!System.Runtime.InteropServices.MemoryMarshal.TryGetArray(data, out var segment) || segment.Array is null)
        {
            // Not array-backed (never the case for received frames): read from a copy.
            var copy = data.ToArray();
            data = copy;
            segment = new ArraySegment<byte>(copy);
        }
        if (!ReferenceEquals(_array, segment.Array)) _array = segment.Array!;
        _offset = segment.Offset;
        _length = segment.Count;
        _position = 0;
    }

    public int Position => _position;

    /// <summary>Goes back to a <see cref="Position"/> read earlier (to read the same bytes another way).</summary>
    public void Rewind(int position)
    {
        if (position < 0 || position > _position) throw new ArgumentOutOfRangeException(nameof(position));
        _position = position;
    }
    public int Remaining => _length - _position;
    public bool AtEnd => _position == _length;

    public bool TryReadByte(out byte value)
    {
        if (Remaining < 1) { value = 0; return false; }
        value = _array[_offset + _position++];
        return true;
    }

    [System.Runtime.CompilerServices.MethodImpl(System.Runtime.CompilerServices.MethodImplOptions.AggressiveInlining)]
    public bool TryReadUInt32(out uint value)
    {
        if (Remaining < 4) { value = 0; return false; }
        value = BinaryPrimitives.ReadUInt32BigEndian(_array.AsSpan(_offset + _position, 4));
        _position += 4;
        return true;
    }

    public bool TryReadUInt64(out ulong value)
    {
        if (Remaining < 8) { value = 0; return false; }
        value = BinaryPrimitives.ReadUInt64BigEndian(_array.AsSpan(_offset + _position, 8));
        _position += 8;
        return true;
    }

    /// <summary>
    /// A length-prefixed byte array. <paramref name="isNull"/> reports the 0xffffffff NULL marker.
    /// Lengths of 0x7fffffff and more (other than the marker) are refused as p11-kit does.
    /// </summary>
    public bool TryReadByteArray(out ReadOnlyMemory<byte> data, out bool isNull)
    {
        data = default;
        isNull = false;
        int start = _position;
        if (!TryReadUInt32(out uint length))
            return false;
        if (length == 0xffffffff)
        {
            isNull = true;
            return true;
        }
        if (length >= 0x7fffffff || length > (uint)Remaining)
        {
            _position = start;
            return false;
        }
        data = new ReadOnlyMemory<byte>(_array, _offset + _position, (int)length);
        _position += (int)length;
        return true;
    }

    /// <summary>
    /// Reads a length-prefixed byte array and says whether it holds exactly <paramref name="expected"/>;
    /// null when it is truncated or NULL. For the signature every message carries, compared in place.
    /// </summary>
    public bool? MatchByteArray(ReadOnlySpan<byte> expected)
    {
        int start = _position;
        if (!TryReadUInt32(out uint length) || length == 0xffffffff)
            return null;
        if (length >= 0x7fffffff || length > (uint)Remaining)
        {
            _position = start;
            return null;
        }
        bool same = length == (uint)expected.Length && _array.AsSpan(_offset + _position, expected.Length).SequenceEqual(expected);
        _position += (int)length;
        return same;
    }

    public bool TryReadBytes(int count, out ReadOnlyMemory<byte> data)
    {
        if (count < 0 || Remaining < count) { data = default; return false; }
        data = new ReadOnlyMemory<byte>(_array, _offset + _position, count);
        _position += count;
        return true;
    }
}
