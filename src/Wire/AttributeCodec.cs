using System.Buffers.Binary;

namespace P11Proxy.Wire;

/// <summary>
/// One decoded attribute of an 'aA' array. <see cref="Length"/> is the sender's ulValueLen;
/// the value is held in the form of its <see cref="Kind"/>.
/// </summary>
public sealed class WireAttribute
{
    public ulong Type { get; init; }

    /// <summary>False when the sender's ulValueLen was CK_UNAVAILABLE_INFORMATION (no value follows).</summary>
    public bool Valid { get; init; }

    public uint Length { get; init; }
    public AttributeValueKind Kind { get; init; }

    /// <summary>Byte and ULong kinds.</summary>
    public ulong Scalar { get; init; }

    /// <summary>ByteArray and Date kinds (a date is empty or 8 bytes YYYYMMDD).</summary>
    public WireBytes Bytes { get; init; }

    /// <summary>AttributeArray kind.</summary>
    public WireAttribute[]? Nested { get; init; }

    /// <summary>MechanismTypeArray kind.</summary>
    public ulong[]? Mechanisms { get; init; }

    /// <summary>Size of the value in the C layout of an LP64 host (what ulValueLen must cover).</summary>
    public ulong NativeLength => Kind switch
    {
        AttributeValueKind.Byte => 1,
        AttributeValueKind.ULong => 8,
        AttributeValueKind.AttributeArray => (ulong)(Nested?.Length ?? 0) * AttributeCodec.NativeAttributeSize,
        AttributeValueKind.MechanismTypeArray => (ulong)(Mechanisms?.Length ?? 0) * 8,
        _ => (ulong)Bytes.Length,
    };

    /// <summary>
    /// Writes the value in C layout (native byte order) into <paramref name="destination"/> for the
    /// kinds that have no pointers; returns the bytes written, or -1 if it does not fit.
    /// </summary>
    public int CopyFlatValueTo(Span<byte> destination)
    {
        switch (Kind)
        {
            case AttributeValueKind.Byte:
                if (destination.Length < 1) return -1;
                destination[0] = (byte)Scalar;
                return 1;
            case AttributeValueKind.ULong:
                if (destination.Length < 8) return -1;
                BinaryPrimitives.WriteUInt64LittleEndian(destination, Scalar);
                return 8;
            case AttributeValueKind.MechanismTypeArray:
                var mechanisms = Mechanisms ?? [];
                if (destination.Length < mechanisms.Length * 8) return -1;
                for (int i = 0; i < mechanisms.Length; i++)
                    BinaryPrimitives.WriteUInt64LittleEndian(destination[(i * 8)..], mechanisms[i]);
                return mechanisms.Length * 8;
            case AttributeValueKind.AttributeArray:
                return -1;
            default:
                if (destination.Length < Bytes.Length) return -1;
                Bytes.Data.Span.CopyTo(destination);
                return Bytes.Length;
        }
    }
}

/// <summary>One entry of an 'fA' request: the type and the size of the caller's buffer (0: size query).</summary>
public sealed class WireAttributeBuffer
{
    public ulong Type { get; init; }
    public uint Length { get; init; }

    /// <summary>For template attributes with a buffer: the nested entries.</summary>
    public WireAttributeBuffer[]? Nested { get; init; }
}

/// <summary>
/// Attribute encoding of rpc-message.c: type (32 bits), validity byte, length (32 bits), then the
/// value in the layout chosen by the type's <see cref="AttributeValueKind"/>. Values are given
/// and returned as their C byte images (little-endian LP64), never as pointers.
/// </summary>
public static class AttributeCodec
{
    /// <summary>sizeof(CK_ATTRIBUTE) on LP64: type, pointer, length.</summary>
    public const int NativeAttributeSize = 24;

    /// <summary>Nesting limit for templates inside templates (p11-kit's P11_RPC_MAX_RECURSION_DEPTH).</summary>
    public const int MaxDepth = 8;

    /// <summary>The smallest encoded attribute (type and validity byte): bounds counts from the peer.</summary>
    private const int MinEncodedAttribute = 5;

    /// <summary>
    /// Most attributes one template (or mechanism list value) may hold. Real templates have tens;
    /// without a cap a 64 MiB frame of 5-byte attributes would become millions of objects.
    /// </summary>
    public const int MaxArrayCount = 16384;

    /// <summary>An attribute whose ulValueLen is CK_UNAVAILABLE_INFORMATION.</summary>
    public static bool WriteUnavailable(WireWriter writer, ulong type)
    {
        if (type > uint.MaxValue) { writer.Fail(); return false; }
        writer.WriteUInt32((uint)type);
        writer.WriteByte(0);
        return true;
    }

    /// <summary>
    /// An attribute with a flat value (every kind but a non-NULL nested template).
    /// <paramref name="value"/> is the C image of pValue (ignored when <paramref name="valueIsNull"/>).
    /// </summary>
    public static bool WriteFlat(WireWriter writer, WireProfile profile, ulong type, ulong length,
        ReadOnlySpan<byte> value, bool valueIsNull)
    {
        if (type > uint.MaxValue || length > uint.MaxValue) { writer.Fail(); return false; }
        writer.WriteUInt32((uint)type);
        writer.WriteByte(1);
        writer.WriteUInt32((uint)length);
        var kind = profile.KindOf(type);
        switch (kind)
        {
            case AttributeValueKind.Byte:
                if (length > 1) { writer.Fail(); return false; }
                writer.WriteByte(!valueIsNull && length == 1 ? value[0] : (byte)0);
                return true;
            case AttributeValueKind.ULong:
            {
                if (length > 8) { writer.Fail(); return false; }
                Span<byte> image = stackalloc byte[8];
                image.Clear();
                if (!valueIsNull) value[..(int)length].CopyTo(image);
                writer.WriteUInt64(BinaryPrimitives.ReadUInt64LittleEndian(image));
                return true;
            }
            case AttributeValueKind.AttributeArray:
                // Only reached for a NULL template: p11-kit writes an empty array.
                if (!valueIsNull) { writer.Fail(); return false; }
                writer.WriteUInt32(0);
                return true;
            case AttributeValueKind.MechanismTypeArray:
            {
                // A NULL value (a size answer) has no elements: the count says so, the length
                // field above still carries the size. (p11-kit writes length / 8 here and no
                // elements, which leaves every reader out of step.)
                ulong count = valueIsNull ? 0 : length / 8;
                if (count > uint.MaxValue) { writer.Fail(); return false; }
                writer.WriteUInt32((uint)count);
                for (int i = 0; i < (int)count; i++)
                    writer.WriteUInt64(BinaryPrimitives.ReadUInt64LittleEndian(value[(i * 8)..]));
                return true;
            }
            case AttributeValueKind.Date:
                if (length != 0 && length != 8) { writer.Fail(); return false; }
                if (!valueIsNull && length == 8) writer.WriteByteArray(value[..8]);
                else writer.WriteNullByteArray();
                return true;
            default:
                if (valueIsNull) writer.WriteNullByteArray();
                else writer.WriteByteArray(value[..(int)length]);
                return true;
        }
    }

    /// <summary>Header of a non-NULL nested template; the caller then writes <paramref name="count"/> attributes.</summary>
    public static bool WriteNestedHeader(WireWriter writer, ulong type, ulong length, uint count)
    {
        if (type > uint.MaxValue || length > uint.MaxValue) { writer.Fail(); return false; }
        writer.WriteUInt32((uint)type);
        writer.WriteByte(1);
        writer.WriteUInt32((uint)length);
        writer.WriteUInt32(count);
        return true;
    }

    /// <summary>Writes a decoded attribute back out (the broker's replies, and re-encoding in tests).</summary>
    public static bool Write(WireWriter writer, WireProfile profile, WireAttribute attribute)
    {
        if (!attribute.Valid)
            return WriteUnavailable(writer, attribute.Type);
        if (attribute.Kind == AttributeValueKind.AttributeArray && attribute.Nested is { Length: > 0 } nested)
        {
            if (!WriteNestedHeader(writer, attribute.Type, attribute.Length, (uint)nested.Length))
                return false;
            foreach (var child in nested)
                if (!Write(writer, profile, child))
                    return false;
            return true;
        }
        if (attribute.Kind == AttributeValueKind.AttributeArray)
            return WriteFlat(writer, profile, attribute.Type, attribute.Length, default, valueIsNull: true);

        Span<byte> small = stackalloc byte[8];
        switch (attribute.Kind)
        {
            case AttributeValueKind.Byte:
            case AttributeValueKind.ULong:
            {
                int size = attribute.CopyFlatValueTo(small);
                int used = (int)Math.Min(attribute.Length, (uint)size);
                return WriteFlat(writer, profile, attribute.Type, attribute.Length, small[..used], valueIsNull: false);
            }
            case AttributeValueKind.MechanismTypeArray:
            {
                var image = new byte[(attribute.Mechanisms?.Length ?? 0) * 8];
                attribute.CopyFlatValueTo(image);
                // The announced length travels as it came, but never shorter than the elements.
                ulong length = Math.Max(attribute.Length, (ulong)image.Length);
                if (length != (ulong)image.Length && image.Length != 0) length = (ulong)image.Length;
                return WriteFlat(writer, profile, attribute.Type, image.Length == 0 ? attribute.Length : length, image,
                    valueIsNull: image.Length == 0);
            }
            default:
                return WriteFlat(writer, profile, attribute.Type, attribute.Bytes.IsNull ? attribute.Length : (ulong)attribute.Bytes.Length,
                    attribute.Bytes.Data.Span, attribute.Bytes.IsNull);
        }
    }

    /// <summary>Reads an 'aA' array: count, then attributes. Counts are bounded by the bytes present.</summary>
    public static bool TryReadArray(WireReader reader, WireProfile profile, out WireAttribute[] attributes) =>
        TryReadArray(reader, profile, 0, out attributes);

    private static bool TryReadArray(WireReader reader, WireProfile profile, int depth, out WireAttribute[] attributes)
    {
        attributes = [];
        if (!reader.TryReadUInt32(out uint count) || count > reader.Remaining / MinEncodedAttribute || count > MaxArrayCount)
            return false;
        var result = count == 0 ? [] : new WireAttribute[count];
        for (int i = 0; i < result.Length; i++)
            if (!TryRead(reader, profile, depth, out result[i]))
                return false;
        attributes = result;
        return true;
    }

    public static bool TryRead(WireReader reader, WireProfile profile, out WireAttribute attribute) =>
        TryRead(reader, profile, 0, out attribute);

    private static bool TryRead(WireReader reader, WireProfile profile, int depth, out WireAttribute attribute)
    {
        attribute = null!;
        if (!reader.TryReadUInt32(out uint type) || !reader.TryReadByte(out byte validity))
            return false;
        if (validity == 0)
        {
            attribute = new WireAttribute { Type = type, Valid = false, Kind = profile.KindOf(type) };
            return true;
        }
        if (!reader.TryReadUInt32(out uint length))
            return false;

        var kind = profile.KindOf(type);
        WireAttribute value;
        switch (kind)
        {
            case AttributeValueKind.Byte:
                if (!reader.TryReadByte(out byte b)) return false;
                value = new WireAttribute { Type = type, Valid = true, Length = length, Kind = kind, Scalar = b };
                break;
            case AttributeValueKind.ULong:
                if (!reader.TryReadUInt64(out ulong u)) return false;
                value = new WireAttribute { Type = type, Valid = true, Length = length, Kind = kind, Scalar = u };
                break;
            case AttributeValueKind.AttributeArray:
                // Nested templates are where a hostile peer recurses; the depth is bounded.
                if (depth >= MaxDepth) return false;
                if (!TryReadArray(reader, profile, depth + 1, out var nested)) return false;
                value = new WireAttribute { Type = type, Valid = true, Length = length, Kind = kind, Nested = nested };
                break;
            case AttributeValueKind.MechanismTypeArray:
            {
                if (!reader.TryReadUInt32(out uint n) || n > reader.Remaining / 8 || n > MaxArrayCount) return false;
                var mechanisms = new ulong[n];
                for (int i = 0; i < mechanisms.Length; i++)
                    reader.TryReadUInt64(out mechanisms[i]);
                value = new WireAttribute { Type = type, Valid = true, Length = length, Kind = kind, Mechanisms = mechanisms };
                break;
            }
            case AttributeValueKind.Date:
            {
                if (!reader.TryReadByteArray(out var date, out bool isNull)) return false;
                if (!isNull && date.Length != 0 && date.Length != 8) return false;
                value = new WireAttribute { Type = type, Valid = true, Length = length, Kind = kind, Bytes = new WireBytes(date, isNull) };
                break;
            }
            default:
            {
                if (!reader.TryReadByteArray(out var bytes, out bool isNull)) return false;
                value = new WireAttribute { Type = type, Valid = true, Length = length, Kind = kind, Bytes = new WireBytes(bytes, isNull) };
                break;
            }
        }
        // As p11-kit: a value longer than the announced length is malformed (when a buffer was announced).
        if (length != 0 && length < value.NativeLength)
            return false;
        attribute = value;
        return true;
    }

    /// <summary>Writes an 'fA' entry header; for a non-NULL template the caller then writes its nested entries.</summary>
    public static bool WriteBufferEntry(WireWriter writer, ulong type, ulong length)
    {
        if (type > uint.MaxValue || length > uint.MaxValue) { writer.Fail(); return false; }
        writer.WriteUInt32((uint)type);
        writer.WriteUInt32((uint)length);
        return true;
    }

    /// <summary>
    /// Reads an 'fA' array. The buffer sizes are what the caller asked for; the total is bounded by
    /// <paramref name="maxTotalBytes"/> so a peer cannot make the broker allocate gigabytes.
    /// </summary>
    public static bool TryReadBufferArray(WireReader reader, WireProfile profile, long maxTotalBytes,
        out WireAttributeBuffer[] buffers)
    {
        long budget = maxTotalBytes;
        return TryReadBufferArray(reader, profile, 0, ref budget, out buffers);
    }

    private static bool TryReadBufferArray(WireReader reader, WireProfile profile, int depth, ref long budget,
        out WireAttributeBuffer[] buffers)
    {
        buffers = [];
        if (depth > MaxDepth)
            return false;
        // Each entry is at least 8 bytes (type and length).
        if (!reader.TryReadUInt32(out uint count) || count > reader.Remaining / 8 || count > MaxArrayCount)
            return false;
        var result = count == 0 ? [] : new WireAttributeBuffer[count];
        for (int i = 0; i < result.Length; i++)
        {
            if (!reader.TryReadUInt32(out uint type) || !reader.TryReadUInt32(out uint length))
                return false;
            if (!TryReadBufferEntryValue(reader, profile, depth, ref budget, type, length, out var nested))
                return false;
            result[i] = new WireAttributeBuffer { Type = type, Length = length, Nested = nested };
        }
        buffers = result;
        return true;
    }

    /// <summary>What follows an 'fA' entry's type and length: nested entries for a template with a buffer, else nothing.</summary>
    private static bool TryReadBufferEntryValue(WireReader reader, WireProfile profile, int depth, ref long budget,
        uint type, uint length, out WireAttributeBuffer[]? nested)
    {
        nested = null;
        if (length != 0 && profile.NestedAttributeBuffers && profile.KindOf(type) == AttributeValueKind.AttributeArray)
        {
            if (!TryReadBufferArray(reader, profile, depth + 1, ref budget, out nested))
                return false;
            return (ulong)length >= (ulong)nested.Length * NativeAttributeSize;
        }
        budget -= length;
        return budget >= 0;
    }

    /// <summary>Choices tried at most when reading p11-kit's client form (each a zero-length template entry).</summary>
    private const int MaxFormChoices = 16;

    /// <summary>
    /// An 'fA' array that must end where the message ends, in the form of p11-kit's client (0.25.4
    /// on): a top-level template entry of length 0 is followed by an empty nested count when the
    /// caller's pValue was non-NULL, and by nothing when it was NULL. The wire does not say which, so
    /// both readings are tried (depth first, a bounded number of choices) until one ends at the end.
    /// </summary>
    public static bool TryReadBufferArrayEndingMessage(WireReader reader, WireProfile profile, long maxTotalBytes,
        out WireAttributeBuffer[] buffers)
    {
        buffers = [];
        if (!profile.NestedAttributeBuffers || !reader.TryReadUInt32(out uint count) || count > reader.Remaining / 8 ||
            count > MaxArrayCount)
            return false;
        var result = count == 0 ? [] : new WireAttributeBuffer[count];
        var choices = new Stack<(int Index, int Position, long Budget)>();
        int i = 0;
        long budget = maxTotalBytes;
        while (true)
        {
            bool failed = false;
            while (i < result.Length)
            {
                if (!reader.TryReadUInt32(out uint type) || !reader.TryReadUInt32(out uint length)) { failed = true; break; }
                if (length == 0 && profile.KindOf(type) == AttributeValueKind.AttributeArray && choices.Count < MaxFormChoices)
                    choices.Push((i, reader.Position, budget));
                if (!TryReadBufferEntryValue(reader, profile, 0, ref budget, type, length, out var nested)) { failed = true; break; }
                result[i++] = new WireAttributeBuffer { Type = type, Length = length, Nested = nested };
            }
            if (!failed && reader.AtEnd)
            {
                buffers = result;
                return true;
            }
            // Take the other reading of the latest choice: an empty nested count after it.
            while (true)
            {
                if (choices.Count == 0) return false;
                var choice = choices.Pop();
                reader.Rewind(choice.Position);
                if (reader.TryReadUInt32(out uint none) && none == 0)
                {
                    i = choice.Index + 1;
                    budget = choice.Budget;
                    break;
                }
            }
        }
    }
}
