// Test-only value codec (see WireValues): compiled into tests/Unit and tests/fuzz, not into src.
using System.Globalization;
using System.Text;
using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire;

/// <summary>'v': a CK_VERSION.</summary>
public readonly record struct WireVersion(byte Major, byte Minor);

/// <summary>
/// 'ay': either data (<see cref="Present"/>; <see cref="Data"/> may be the NULL array, length 0xffffffff)
/// or only a length (a size answer or CKR_BUFFER_TOO_SMALL).
/// </summary>
public sealed record WireByteArray(bool Present, uint Length, WireBytes Data)
{
    public static WireByteArray Of(ReadOnlyMemory<byte> data) => new(true, (uint)data.Length, WireBytes.Of(data));
    public static WireByteArray NullArray => new(true, 0, WireBytes.Null);
    public static WireByteArray LengthOnly(uint length) => new(false, length, WireBytes.Null);

    public bool Equals(WireByteArray? other) => WireValues.ValueEquals(this, other);
    public override int GetHashCode() => HashCode.Combine(Present, Length, Data.IsNull, Data.Length);
}

/// <summary>'au': either values (<see cref="Present"/>) or only a count.</summary>
public sealed record WireULongArray(bool Present, uint Count, ulong[] Values)
{
    public static WireULongArray Of(params ulong[] values) => new(true, (uint)values.Length, values);
    public static WireULongArray CountOnly(uint count) => new(false, count, []);

    public bool Equals(WireULongArray? other) => WireValues.ValueEquals(this, other);
    public override int GetHashCode() => HashCode.Combine(Present, Count);
}

/// <summary>
/// A whole RPC message as a list of plain values, one per signature part, without pointers:
/// for logs, tests and tools. The value types per part are
/// 'y' byte, 'u' ulong, 'z' and 's' byte[], 'v' <see cref="WireVersion"/>, 'ay' <see cref="WireByteArray"/>,
/// 'fy' and 'fu' uint, 'au' <see cref="WireULongArray"/>, 'aA' <see cref="WireAttribute"/>[],
/// 'fA' <see cref="WireAttributeBuffer"/>[], 'M' <see cref="WireMechanism"/>, 'P' <see cref="MechanismUpdate"/>.
/// The ERROR response is the single ulong CK_RV.
/// </summary>
public static class WireValues
{
    /// <summary>Budget for the buffer sizes of an 'fA' request (what the broker would allocate).</summary>
    public const long DefaultMaxAttributeBufferBytes = 64L << 20;

    /// <summary>
    /// Reads every part of a message that <see cref="RpcMessageReader.Parse"/> accepted with
    /// <paramref name="kind"/>. False on malformed or truncated input and on trailing bytes; never
    /// throws for bad bytes. A 'P' part needs the mechanism type: taken from an earlier 'M' of the
    /// same message, else from <paramref name="mechanismType"/> (C_DeriveKey2 replies carry no 'M').
    /// </summary>
    public static bool TryDecode(RpcMessageReader reader, MessageKind kind, out List<object?> values,
        ulong? mechanismType = null, long maxAttributeBufferBytes = DefaultMaxAttributeBufferBytes)
    {
        values = [];
        var call = reader.Call;
        if (call is null)
            return false;
        if (call.Id == RpcCallId.Error)
        {
            // Parse already consumed the CK_RV.
            values.Add(reader.ErrorCode);
            return reader.Reader.AtEnd;
        }

        var parts = call.PartsFor(kind, reader.TypedForm);
        ulong? mechanism = null;
        for (int index = 0; index < parts.Length; index++)
        {
            object? value;
            switch (parts[index])
            {
                case WireType.Byte:
                    if (!reader.TryReadByte(out byte b)) return false;
                    value = b;
                    break;
                case WireType.ULong:
                    if (!reader.TryReadULong(out ulong u)) return false;
                    value = u;
                    break;
                case WireType.ZeroString:
                    if (!reader.TryReadZeroString(out var z)) return false;
                    value = z.ToArray();
                    break;
                case WireType.SpaceString:
                {
                    int width = SpaceStringWidth(call.Id, kind, index);
                    if (width <= 0 || !reader.TryReadSpaceString(out var s)) return false;
                    value = s.ToArray();
                    break;
                }
                case WireType.Version:
                    if (!reader.TryReadVersion(out byte major, out byte minor)) return false;
                    value = new WireVersion(major, minor);
                    break;
                case WireType.ByteArray:
                    if (!reader.TryReadByteArray(out bool present, out var data, out uint length)) return false;
                    value = new WireByteArray(present, length, present ? data : WireBytes.Null);
                    break;
                case WireType.ByteBuffer:
                    if (!reader.TryReadByteBuffer(out uint byteCapacity)) return false;
                    value = byteCapacity;
                    break;
                case WireType.ULongArray:
                {
                    if (!reader.TryReadULongArrayHeader(out bool hasValues, out uint count)) return false;
                    var array = hasValues && count > 0 ? new ulong[count] : [];
                    for (int i = 0; i < array.Length; i++)
                        if (!reader.TryReadULongElement(out array[i])) return false;
                    value = new WireULongArray(hasValues, count, array);
                    break;
                }
                case WireType.ULongBuffer:
                    if (!reader.TryReadULongBuffer(out uint ulongCapacity)) return false;
                    value = ulongCapacity;
                    break;
                case WireType.AttributeArray:
                    if (!reader.TryReadAttributeArray(out var attributes)) return false;
                    value = attributes;
                    break;
                case WireType.AttributeBuffer:
                    if (!reader.TryReadAttributeBuffer(maxAttributeBufferBytes, out var buffers)) return false;
                    value = buffers;
                    break;
                case WireType.Mechanism:
                    if (!reader.TryReadMechanism(out var m)) return false;
                    mechanism = m.Type;
                    value = m;
                    break;
                case WireType.MechanismUpdate:
                {
                    var type = mechanism ?? mechanismType;
                    if (type is null || !reader.TryReadMechanismUpdate(type.Value, out var update)) return false;
                    value = update;
                    break;
                }
                case WireType.MessageParameter:
                    if (!reader.TryReadMessageParameter(out var parameter)) return false;
                    value = parameter;
                    break;
                case WireType.MessageParameterUpdate:
                    if (!reader.TryReadMessageParameterUpdate(out var parameterUpdate)) return false;
                    value = parameterUpdate;
                    break;
                default:
                    return false;
            }
            values.Add(value);
        }
        return reader.Complete;
    }

    /// <summary>
    /// Writes a whole message from values in the form <see cref="TryDecode"/> produces. Values of the
    /// wrong type or count throw <see cref="ArgumentException"/>; values the wire cannot carry
    /// (a mechanism the peer's version does not know, an oversized array) leave
    /// <see cref="RpcMessageWriter.Failed"/> set, so check <see cref="RpcMessageWriter.Complete"/>.
    /// </summary>
    public static void Encode(RpcMessageWriter writer, RpcCall call, MessageKind kind, IReadOnlyList<object?> values,
        ulong? mechanismType = null)
    {
        if (call.Id == RpcCallId.Error)
        {
            if (kind != MessageKind.Response)
                throw new ArgumentException("ERROR is only a response", nameof(kind));
            if (values.Count != 1 || values[0] is not ulong rv)
                throw new ArgumentException("ERROR takes exactly one ulong CK_RV", nameof(values));
            writer.BeginError(rv);
            return;
        }

        var parts = call.PartsFor(kind, call.TypedFor(writer.Profile));
        if (values.Count != parts.Length)
            throw new ArgumentException(
                $"{call.Name} {kind}: {values.Count} values for signature '{Signature.Format(parts)}'", nameof(values));

        writer.Begin(call, kind);
        ulong? mechanism = null;
        for (int index = 0; index < parts.Length; index++)
        {
            object? value = values[index];
            switch (parts[index])
            {
                case WireType.Byte:
                    writer.WriteByte(As<byte>(call, index, value));
                    break;
                case WireType.ULong:
                    writer.WriteULong(As<ulong>(call, index, value));
                    break;
                case WireType.ZeroString:
                    writer.WriteZeroString(As<byte[]>(call, index, value));
                    break;
                case WireType.SpaceString:
                {
                    var text = As<byte[]>(call, index, value);
                    int width = SpaceStringWidth(call.Id, kind, index);
                    if (text.Length != width)
                        throw new ArgumentException($"{call.Name} part {index}: space string of {text.Length} bytes, expected {width}");
                    writer.WriteSpaceString(text);
                    break;
                }
                case WireType.Version:
                {
                    var version = As<WireVersion>(call, index, value);
                    writer.WriteVersion(version.Major, version.Minor);
                    break;
                }
                case WireType.ByteArray:
                {
                    var array = As<WireByteArray>(call, index, value);
                    if (array.Present) writer.WriteByteArray(array.Data);
                    else writer.WriteByteArrayLengthOnly(array.Length);
                    break;
                }
                case WireType.ByteBuffer:
                    writer.WriteByteBuffer(As<uint>(call, index, value));
                    break;
                case WireType.ULongArray:
                {
                    var array = As<WireULongArray>(call, index, value);
                    if (array.Present) writer.WriteULongArray(array.Values);
                    else writer.WriteULongArrayLengthOnly(array.Count);
                    break;
                }
                case WireType.ULongBuffer:
                    writer.WriteULongBuffer(As<uint>(call, index, value));
                    break;
                case WireType.AttributeArray:
                {
                    var attributes = As<WireAttribute[]>(call, index, value);
                    writer.BeginAttributeArray((uint)attributes.Length);
                    foreach (var attribute in attributes)
                        if (!AttributeCodec.Write(writer.Writer, writer.Profile, attribute))
                            break;
                    break;
                }
                case WireType.AttributeBuffer:
                {
                    var buffers = As<WireAttributeBuffer[]>(call, index, value);
                    writer.BeginAttributeBuffer((uint)buffers.Length);
                    WriteBufferEntries(writer.Writer, writer.Profile, buffers, 0);
                    break;
                }
                case WireType.Mechanism:
                {
                    var m = As<WireMechanism>(call, index, value);
                    mechanism = m.Type;
                    if (writer.WriteMechanism(m) != CKR_OK)
                        writer.Writer.Fail();
                    break;
                }
                case WireType.MechanismUpdate:
                {
                    var update = As<MechanismUpdate>(call, index, value);
                    var type = mechanism ?? mechanismType
                        ?? throw new ArgumentException($"{call.Name}: a 'P' value needs the mechanism type", nameof(mechanismType));
                    writer.WriteMechanismUpdate(type, update);
                    break;
                }
                case WireType.MessageParameter:
                    writer.WriteMessageParameter(As<WireMessageParameter>(call, index, value));
                    break;
                case WireType.MessageParameterUpdate:
                    writer.WriteMessageParameterUpdate(As<MessageParameterUpdate>(call, index, value));
                    break;
            }
        }
    }

    private static void WriteBufferEntries(WireWriter writer, WireProfile profile, WireAttributeBuffer[] entries, int depth)
    {
        foreach (var entry in entries)
        {
            if (!AttributeCodec.WriteBufferEntry(writer, entry.Type, entry.Length))
                return;
            // Mirrors AttributeCodec.TryReadBufferArray: a template with a buffer carries its nested entries.
            if (entry.Length != 0 && profile.NestedAttributeBuffers && profile.KindOf(entry.Type) == AttributeValueKind.AttributeArray)
            {
                if (depth >= AttributeCodec.MaxDepth) { writer.Fail(); return; }
                var nested = entry.Nested ?? [];
                writer.WriteUInt32((uint)nested.Length);
                WriteBufferEntries(writer, profile, nested, depth + 1);
            }
        }
    }

    private static T As<T>(RpcCall call, int index, object? value) =>
        value is T typed
            ? typed
            : throw new ArgumentException(
                $"{call.Name} part {index}: expected {typeof(T).Name}, got {value?.GetType().Name ?? "null"}");

    /// <summary>Width of a fixed-size 's' part: the call table's (0 where the part is not a space string).</summary>
    public static int SpaceStringWidth(RpcCallId call, MessageKind kind, int partIndex) => CallTable.Get(call).WidthOf(kind, partIndex);

    /// <summary>Whether a part may hold a PIN (never to be logged): the call table's secret parts.</summary>
    public static bool IsSecret(RpcCallId call, MessageKind kind, int partIndex) => CallTable.Get(call).IsSecret(kind, partIndex);

    private const int MaxDumpBytes = 16;

    /// <summary>A short one-line dump for logs. PINs are printed as <c>&lt;redacted N bytes&gt;</c>.</summary>
    public static string Describe(RpcCall call, MessageKind kind, IReadOnlyList<object?> values)
    {
        var text = new StringBuilder();
        text.Append(call.Name).Append(kind == MessageKind.Request ? " >" : " <");
        if (call.Id == RpcCallId.Error && values.Count == 1 && values[0] is ulong rv)
            return text.Append(' ').Append(ReturnValueName(rv)).ToString();
        var parts = call.PartsFor(kind);
        for (int i = 0; i < values.Count; i++)
        {
            text.Append(i == 0 ? " " : ", ");
            if (i < parts.Length && IsSecret(call.Id, kind, i) && values[i] is WireByteArray secret)
                text.Append(secret.Present ? $"<redacted {secret.Data.Length} bytes>" : $"<redacted, length {secret.Length}>");
            else
                DescribeValue(text, values[i]);
        }
        return text.ToString();
    }

    private static string ReturnValueName(ulong rv) => Pkcs11Names.ReturnValue(rv) ?? Hex(rv);

    private static string Hex(ulong value) => "0x" + value.ToString("x", CultureInfo.InvariantCulture);

    private static void DescribeValue(StringBuilder text, object? value)
    {
        switch (value)
        {
            case null: text.Append("null"); break;
            case byte b: text.Append(b); break;
            case ulong u: text.Append(u <= 0xffff ? u.ToString(CultureInfo.InvariantCulture) : Hex(u)); break;
            case uint capacity: text.Append("buf:").Append(capacity); break;
            case byte[] s: text.Append('"').Append(Printable(s)).Append('"'); break;
            case WireVersion v: text.Append(v.Major).Append('.').Append(v.Minor); break;
            case WireByteArray a:
                if (!a.Present) text.Append("len:").Append(a.Length);
                else if (a.Data.IsNull) text.Append("NULL");
                else DescribeBytes(text, a.Data.Data.Span);
                break;
            case WireULongArray ua:
                if (!ua.Present) text.Append("count:").Append(ua.Count);
                else
                {
                    text.Append('[');
                    for (int i = 0; i < ua.Values.Length && i < 8; i++)
                        text.Append(i == 0 ? "" : " ").Append(Hex(ua.Values[i]));
                    if (ua.Values.Length > 8) text.Append(" … ").Append(ua.Values.Length).Append(" values");
                    text.Append(']');
                }
                break;
            case WireAttribute[] attributes: DescribeAttributes(text, attributes, 0); break;
            case WireAttributeBuffer[] buffers: DescribeBuffers(text, buffers); break;
            case WireMechanism m:
                if (m.IsNullMechanism) { text.Append("mechanism NULL"); break; }
                text.Append(Pkcs11Names.Mechanism(m.Type) ?? Hex(m.Type));
                if (m.Parameter is not null) text.Append('(').Append(DescribeParameter(m.Parameter)).Append(')');
                break;
            case MechanismUpdate p:
                if (!p.HasParameter) text.Append("update:none");
                else if (p.HasData) text.Append("update:").Append(p.Data.Length).Append(" bytes");
                else text.Append("update:len ").Append(p.Length);
                break;
            case WireMessageParameter mp:
                // Lengths and numbers only: an IV or tag is no secret, but a trace need not show it.
                text.Append(mp.Form.ToString());
                if (mp.Form != MessageParameterForm.Absent)
                    text.Append("(iv ").Append(mp.Iv.IsNull ? "NULL" : mp.Iv.Length + " bytes").Append(", tag ")
                        .Append(mp.Tag.IsNull ? "NULL" : mp.Tag.Length + " bytes").Append(')');
                break;
            case MessageParameterUpdate mu:
                text.Append("written: iv ").Append(mu.Iv.IsNull ? "-" : mu.Iv.Length + " bytes")
                    .Append(", tag ").Append(mu.Tag.IsNull ? "-" : mu.Tag.Length + " bytes");
                break;
            default: text.Append(value); break;
        }
    }

    private static string DescribeParameter(MechanismParameter parameter) => parameter switch
    {
        RawParameter raw => $"{raw.Bytes.Length} bytes",
        RsaPssParameter pss => $"hash {Pkcs11Names.Mechanism(pss.HashAlgorithm) ?? Hex(pss.HashAlgorithm)}, mgf {Hex(pss.Mgf)}, salt {pss.SaltLength}",
        RsaOaepParameter oaep => $"hash {Pkcs11Names.Mechanism(oaep.HashAlgorithm) ?? Hex(oaep.HashAlgorithm)}, mgf {Hex(oaep.Mgf)}, source {oaep.Source}, {oaep.SourceData.Length} bytes",
        GcmParameter gcm => $"iv {gcm.Iv.Length} bytes, aad {gcm.Aad.Length} bytes, tag {gcm.TagBits} bits",
        _ => parameter.GetType().Name.Replace("Parameter", "", StringComparison.Ordinal),
    };

    private static void DescribeAttributes(StringBuilder text, WireAttribute[] attributes, int depth)
    {
        text.Append('{');
        for (int i = 0; i < attributes.Length; i++)
        {
            var attribute = attributes[i];
            if (i > 0) text.Append(", ");
            if (i >= 16) { text.Append("… ").Append(attributes.Length).Append(" attributes"); break; }
            text.Append(Pkcs11Names.Attribute(attribute.Type) ?? Hex(attribute.Type));
            if (!attribute.Valid) { text.Append("=unavailable"); continue; }
            text.Append('=');
            switch (attribute.Kind)
            {
                case AttributeValueKind.Byte:
                case AttributeValueKind.ULong:
                    text.Append(attribute.Scalar <= 0xffff ? attribute.Scalar.ToString(CultureInfo.InvariantCulture) : Hex(attribute.Scalar));
                    break;
                case AttributeValueKind.AttributeArray:
                    if (depth < 2) DescribeAttributes(text, attribute.Nested ?? [], depth + 1);
                    else text.Append(attribute.Nested?.Length ?? 0).Append(" attributes");
                    break;
                case AttributeValueKind.MechanismTypeArray:
                    text.Append(attribute.Mechanisms?.Length ?? 0).Append(" mechanisms");
                    break;
                default:
                    if (attribute.Bytes.IsNull) text.Append("NULL len:").Append(attribute.Length);
                    else DescribeBytes(text, attribute.Bytes.Data.Span);
                    break;
            }
        }
        text.Append('}');
    }

    private static void DescribeBuffers(StringBuilder text, WireAttributeBuffer[] buffers)
    {
        text.Append('{');
        for (int i = 0; i < buffers.Length; i++)
        {
            if (i > 0) text.Append(", ");
            if (i >= 16) { text.Append("… ").Append(buffers.Length).Append(" entries"); break; }
            text.Append(Pkcs11Names.Attribute(buffers[i].Type) ?? Hex(buffers[i].Type)).Append(':').Append(buffers[i].Length);
            if (buffers[i].Nested is { } nested) DescribeBuffers(text, nested);
        }
        text.Append('}');
    }

    private static void DescribeBytes(StringBuilder text, ReadOnlySpan<byte> bytes)
    {
        text.Append(bytes.Length).Append(" bytes");
        if (bytes.IsEmpty) return;
        text.Append(' ').Append(Convert.ToHexStringLower(bytes[..Math.Min(bytes.Length, MaxDumpBytes)]));
        if (bytes.Length > MaxDumpBytes) text.Append('…');
    }

    private static string Printable(ReadOnlySpan<byte> bytes)
    {
        var text = new StringBuilder(bytes.Length);
        foreach (var b in bytes)
            text.Append(b is >= 0x20 and < 0x7f and not (byte)'"' ? (char)b : '.');
        return text.ToString().TrimEnd(' ');
    }

    /// <summary>Deep, content-based equality of decoded values (byte contents, arrays, nested templates).</summary>
    public static bool ValueEquals(object? a, object? b)
    {
        if (ReferenceEquals(a, b)) return true;
        if (a is null || b is null) return false;
        switch (a)
        {
            case byte[] x when b is byte[] y:
                return x.AsSpan().SequenceEqual(y);
            case ulong[] x when b is ulong[] y:
                return x.AsSpan().SequenceEqual(y);
            case WireBytes x when b is WireBytes y:
                return x.IsNull == y.IsNull && x.Data.Span.SequenceEqual(y.Data.Span);
            case WireByteArray x when b is WireByteArray y:
                return x.Present == y.Present && x.Length == y.Length && ValueEquals(x.Data, y.Data);
            case WireULongArray x when b is WireULongArray y:
                return x.Present == y.Present && x.Count == y.Count && ValueEquals(x.Values, y.Values);
            case WireAttribute[] x when b is WireAttribute[] y:
                return SequenceEquals(x, y);
            case WireAttribute x when b is WireAttribute y:
                return x.Type == y.Type && x.Valid == y.Valid && x.Kind == y.Kind && (!x.Valid ||
                    x.Length == y.Length && x.Scalar == y.Scalar && ValueEquals(x.Bytes, y.Bytes) &&
                    NullableSequenceEquals(x.Nested, y.Nested) && NullableSequenceEquals(x.Mechanisms, y.Mechanisms));
            case WireAttributeBuffer[] x when b is WireAttributeBuffer[] y:
                return SequenceEquals(x, y);
            case WireAttributeBuffer x when b is WireAttributeBuffer y:
                return x.Type == y.Type && x.Length == y.Length && NullableSequenceEquals(x.Nested, y.Nested);
            case WireMechanism x when b is WireMechanism y:
                return x.Type == y.Type && ParameterEquals(x.Parameter, y.Parameter);
            case MechanismUpdate x when b is MechanismUpdate y:
                return x.HasParameter == y.HasParameter && x.Capsulation == y.Capsulation && x.HasData == y.HasData &&
                       x.Length == y.Length && (!x.HasData || ValueEquals(x.Data, y.Data));
            case WireMessageParameter x when b is WireMessageParameter y:
                return x.Form == y.Form && ValueEquals(x.Iv, y.Iv) && x.IvFixedBits == y.IvFixedBits && x.IvGenerator == y.IvGenerator &&
                       ValueEquals(x.Tag, y.Tag) && x.TagBits == y.TagBits && x.DataLength == y.DataLength;
            case MessageParameterUpdate x when b is MessageParameterUpdate y:
                return ValueEquals(x.Iv, y.Iv) && ValueEquals(x.Tag, y.Tag);
            default:
                return a.Equals(b);
        }
    }

    private static bool NullableSequenceEquals<T>(T[]? x, T[]? y) =>
        x is null || y is null ? (x?.Length ?? 0) == (y?.Length ?? 0) : SequenceEquals(x, y);

    private static bool SequenceEquals<T>(T[] x, T[] y)
    {
        if (x.Length != y.Length) return false;
        for (int i = 0; i < x.Length; i++)
            if (!ValueEquals(x[i], y[i])) return false;
        return true;
    }

    private static bool ParameterEquals(MechanismParameter? x, MechanismParameter? y) => (x, y) switch
    {
        (null, null) => true,
        (null, _) or (_, null) => false,
        (RawParameter a, RawParameter b) => a.Bytes.Span.SequenceEqual(b.Bytes.Span),
        (RsaOaepParameter a, RsaOaepParameter b) => a.HashAlgorithm == b.HashAlgorithm && a.Mgf == b.Mgf &&
            a.Source == b.Source && ValueEquals(a.SourceData, b.SourceData),
        (Ecdh1DeriveParameter a, Ecdh1DeriveParameter b) => a.Kdf == b.Kdf && ValueEquals(a.SharedData, b.SharedData) &&
            ValueEquals(a.PublicData, b.PublicData),
        (AesCtrParameter a, AesCtrParameter b) => a.CounterBits == b.CounterBits && a.CounterBlock.Span.SequenceEqual(b.CounterBlock.Span),
        (GcmParameter a, GcmParameter b) => ValueEquals(a.Iv, b.Iv) && a.IvBits == b.IvBits && ValueEquals(a.Aad, b.Aad) &&
            a.TagBits == b.TagBits,
        (IbmBtcDeriveParameter a, IbmBtcDeriveParameter b) => a.Type == b.Type && a.ChildKeyIndex == b.ChildKeyIndex &&
            ValueEquals(a.ChainCode, b.ChainCode) && a.Version == b.Version,
        (IbmKyberParameter a, IbmKyberParameter b) => a.Version == b.Version && a.Mode == b.Mode && a.Kdf == b.Kdf &&
            a.Prepend == b.Prepend && ValueEquals(a.Cipher, b.Cipher) && ValueEquals(a.SharedData, b.SharedData) &&
            a.Secret == b.Secret,
        _ => x.Equals(y), // records without memory fields compare by value
    };
}
