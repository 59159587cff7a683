namespace P11Proxy.Wire;

/// <summary>
/// Builds one request or response body: call id, signature, then values in signature order.
/// Each write is checked against the call table, so module and broker cannot drift apart.
/// </summary>
public sealed class RpcMessageWriter : IDisposable
{
    private WireType[] _parts = [];
    private int _cursor;

    public RpcMessageWriter(WireProfile profile, int initialCapacity = 256)
    {
        Profile = profile;
        Writer = new WireWriter(initialCapacity);
    }

    public WireWriter Writer { get; }
    public WireProfile Profile { get; set; }
    public RpcCall? Call { get; private set; }
    public bool Failed => Writer.Failed;

    /// <summary>Starts a message, in the typed form when the call has one and the profile takes it.</summary>
    public void Begin(RpcCall call, MessageKind kind) => Begin(call, kind, call.TypedFor(Profile));

    /// <summary>Starts a message in the form given: a reply answers in the form of its request.</summary>
    public void Begin(RpcCall call, MessageKind kind, bool typedForm)
    {
        Writer.Reset();
        // Compared before storing: a thread repeating a call stores no reference (no GC write barrier).
        if (!ReferenceEquals(Call, call)) Call = call;
        var parts = call.PartsFor(kind, typedForm);
        if (!ReferenceEquals(_parts, parts)) _parts = parts;
        _cursor = 0;
        _kind = kind;
        Writer.WriteUInt32((uint)call.Id);
        Writer.WriteByteArray(call.SignatureBytesFor(kind, typedForm));
    }

    /// <summary>An error reply: call id 0, signature "u", the CK_RV.</summary>
    public void BeginError(ulong rv)
    {
        Begin(CallTable.Get(RpcCallId.Error), MessageKind.Response);
        WriteULong(rv);
    }

    private void Expect(WireType type)
    {
        if (_cursor >= _parts.Length || _parts[_cursor] != type)
            throw new InvalidOperationException(
                $"{Call?.Name}: wrote {type} where the signature '{Signature.Format(_parts)}' has " +
                (_cursor < _parts.Length ? _parts[_cursor].ToString() : "nothing more"));
        _cursor++;
    }

    /// <summary>True when every part of the signature was written and nothing failed.</summary>
    public bool Complete => _cursor == _parts.Length && !Writer.Failed;

    public void WriteByte(byte value)
    {
        Expect(WireType.Byte);
        Writer.WriteByte(value);
    }

    public void WriteULong(ulong value)
    {
        Expect(WireType.ULong);
        Writer.WriteUInt64(value);
    }

    /// <summary>'z': the string's bytes without the terminating NUL.</summary>
    public void WriteZeroString(ReadOnlySpan<byte> text)
    {
        Expect(WireType.ZeroString);
        Writer.WriteByteArray(text);
    }

    private MessageKind _kind;

    /// <summary>The width the call table gives the next part when it is a space string ('s').</summary>
    public int NextSpaceWidth => Call is null ? 0 : Call.WidthOf(_kind, _cursor);

    /// <summary>'s': a fixed-width, space-padded field exactly as in the C struct, of the row's width.</summary>
    public void WriteSpaceString(ReadOnlySpan<byte> padded)
    {
        int width = NextSpaceWidth;
        Expect(WireType.SpaceString);
        if (padded.Length != width) { Writer.Fail(); return; }
        Writer.WriteByteArray(padded);
    }

    public void WriteVersion(byte major, byte minor)
    {
        Expect(WireType.Version);
        Writer.WriteByte(major);
        Writer.WriteByte(minor);
    }

    /// <summary>'ay' with data (a NULL pointer with length 0 is <see cref="WireBytes.Null"/>).</summary>
    public void WriteByteArray(WireBytes bytes)
    {
        Expect(WireType.ByteArray);
        Writer.WriteByte(1);
        if (bytes.IsNull) Writer.WriteNullByteArray();
        else Writer.WriteByteArray(bytes.Data.Span);
    }

    public void WriteByteArray(ReadOnlySpan<byte> bytes)
    {
        Expect(WireType.ByteArray);
        Writer.WriteByte(1);
        Writer.WriteByteArray(bytes);
    }

    /// <summary>'ay' without data: only a length (a size answer, or CKR_BUFFER_TOO_SMALL with the needed size).</summary>
    public void WriteByteArrayLengthOnly(uint length)
    {
        Expect(WireType.ByteArray);
        Writer.WriteByte(0);
        Writer.WriteUInt32(length);
    }

    /// <summary>
    /// 'fy': the capacity of the caller's output buffer. 0 means "size query" (NULL buffer);
    /// <see cref="ZeroLengthBuffer"/> marks a non-NULL buffer of length 0 (p11-kit 0.25+).
    /// </summary>
    public void WriteByteBuffer(uint capacity)
    {
        Expect(WireType.ByteBuffer);
        Writer.WriteUInt32(capacity);
    }

    /// <summary>The 'fy' value p11-kit 0.25+ uses for a non-NULL buffer of length 0.</summary>
    public const uint ZeroLengthBuffer = 0xffffffff;

    public void WriteULongArray(ReadOnlySpan<ulong> values)
    {
        Expect(WireType.ULongArray);
        Writer.WriteByte(1);
        Writer.WriteUInt32((uint)values.Length);
        foreach (var value in values)
            Writer.WriteUInt64(value);
    }

    public void WriteULongArrayLengthOnly(uint count)
    {
        Expect(WireType.ULongArray);
        Writer.WriteByte(0);
        Writer.WriteUInt32(count);
    }

    public void WriteULongBuffer(uint capacity)
    {
        Expect(WireType.ULongBuffer);
        Writer.WriteUInt32(capacity);
    }

    /// <summary>'aA': the count; the caller then writes each attribute with <see cref="AttributeCodec"/>.</summary>
    public void BeginAttributeArray(uint count)
    {
        Expect(WireType.AttributeArray);
        Writer.WriteUInt32(count);
    }

    /// <summary>'fA': the count; the caller then writes entries with <see cref="AttributeCodec.WriteBufferEntry"/>.</summary>
    public void BeginAttributeBuffer(uint count)
    {
        Expect(WireType.AttributeBuffer);
        Writer.WriteUInt32(count);
    }

    /// <summary>'M': returns CKR_OK or the CK_RV p11-kit's client gives for a mechanism it cannot carry.</summary>
    /// <summary>'M'; <paramref name="anyIvLength"/>: the peer takes IVs of any length (our broker).</summary>
    public ulong WriteMechanism(in WireMechanism mechanism, bool anyIvLength = false)
    {
        Expect(WireType.Mechanism);
        return MechanismCodec.Encode(Writer, Profile, mechanism, anyIvLength);
    }

    public void WriteMechanismUpdate(ulong mechanismType, in MechanismUpdate update)
    {
        Expect(WireType.MechanismUpdate);
        MechanismCodec.EncodeUpdate(Writer, Profile, mechanismType, update);
    }

    /// <summary>'T': a per-message parameter by value (typed form only).</summary>
    public void WriteMessageParameter(in WireMessageParameter parameter)
    {
        Expect(WireType.MessageParameter);
        MessageParameterCodec.Encode(Writer, parameter);
    }

    /// <summary>'U': what the module wrote into the per-message parameter (typed form only).</summary>
    public void WriteMessageParameterUpdate(in MessageParameterUpdate update)
    {
        Expect(WireType.MessageParameterUpdate);
        MessageParameterCodec.EncodeUpdate(Writer, update);
    }

    public void Dispose() => Writer.Dispose();
}

/// <summary>Why a received message was refused.</summary>
public enum ParseStatus
{
    Ok,
    Truncated,
    UnknownCall,
    ErrorCallAsRequest,
    BadSignature,
    CallUnknownToVersion,
}

/// <summary>
/// Reads one received body in signature order. All reads return false on malformed input; the
/// caller turns that into CKR_DEVICE_ERROR (module) or drops the connection (broker).
/// </summary>
public sealed class RpcMessageReader
{
    private WireType[] _parts = [];
    private int _cursor;

    public RpcMessageReader(WireProfile profile) => Profile = profile;

    public WireReader Reader { get; } = new();
    public WireProfile Profile { get; set; }

    // The call of the last message parsed, kept (not cleared) across parses so that a thread
    // repeating a call stores no reference; _parsed says whether it belongs to the current one.
    private RpcCall? _call;
    private bool _parsed;

    /// <summary>The call of the message parsed last, or null when that parse failed.</summary>
    public RpcCall? Call => _parsed ? _call : null;

    /// <summary>Whether the message parsed last came in the typed form (<see cref="RpcCall.HasTypedForm"/>).</summary>
    public bool TypedForm { get; private set; }

    /// <summary>For an error response, the CK_RV it carries.</summary>
    public ulong ErrorCode { get; private set; }

    public bool IsError => Call?.Id == RpcCallId.Error;

    public ParseStatus Parse(ReadOnlyMemory<byte> body, MessageKind kind)
    {
        Reader.Reset(body);
        _parsed = false;
        ErrorCode = 0;
        _cursor = 0;
        _kind = kind;
        if (!Reader.TryReadUInt32(out uint id))
            return ParseStatus.Truncated;
        if (!CallTable.TryGet(id, out var call))
            return ParseStatus.UnknownCall;
        if (kind == MessageKind.Request && call.Id == RpcCallId.Error)
            return ParseStatus.ErrorCallAsRequest;
        bool typedForm = false;
        if (call.TypedFor(Profile))
        {
            // Either form may come: ours, or p11-kit's from a peer that did not take up the offer
            // (an older p11proxy module); the signature says which.
            if (!Reader.TryReadByteArray(out var signature, out bool isNull) || isNull)
                return ParseStatus.Truncated;
            if (signature.Span.SequenceEqual(call.SignatureBytesFor(kind, typed: true)))
                typedForm = true;
            else if (!signature.Span.SequenceEqual(call.SignatureBytesFor(kind)))
                return ParseStatus.BadSignature;
        }
        else
        {
            switch (Reader.MatchByteArray(call.SignatureBytesFor(kind)))
            {
                case null: return ParseStatus.Truncated;
                case false: return ParseStatus.BadSignature;
            }
        }
        if (kind == MessageKind.Request && !Profile.Knows(call))
            return ParseStatus.CallUnknownToVersion;
        if (!ReferenceEquals(_call, call)) _call = call;
        _parsed = true;
        TypedForm = typedForm;
        var parts = call.PartsFor(kind, typedForm);
        if (!ReferenceEquals(_parts, parts)) _parts = parts;
        if (call.Id == RpcCallId.Error)
        {
            if (!TryReadULong(out ulong rv))
                return ParseStatus.Truncated;
            ErrorCode = rv;
        }
        return ParseStatus.Ok;
    }

    private bool Next(WireType type)
    {
        if (_cursor >= _parts.Length || _parts[_cursor] != type)
            throw new InvalidOperationException(
                $"{Call?.Name}: read {type} where the signature '{Signature.Format(_parts)}' has " +
                (_cursor < _parts.Length ? _parts[_cursor].ToString() : "nothing more"));
        _cursor++;
        return true;
    }

    /// <summary>True when every part was read and no bytes are left over.</summary>
    public bool Complete => _cursor == _parts.Length && Reader.AtEnd;

    public bool TryReadByte(out byte value)
    {
        Next(WireType.Byte);
        return Reader.TryReadByte(out value);
    }

    public bool TryReadULong(out ulong value)
    {
        Next(WireType.ULong);
        return Reader.TryReadUInt64(out value);
    }

    public bool TryReadZeroString(out ReadOnlyMemory<byte> text)
    {
        Next(WireType.ZeroString);
        return Reader.TryReadByteArray(out text, out bool isNull) && !isNull;
    }

    /// <summary>'s' of the exact width the C struct has; any other width is malformed.</summary>
    /// <summary>'s': a fixed-width field; its width is the call table's for this part.</summary>
    public bool TryReadSpaceString(out ReadOnlyMemory<byte> padded)
    {
        int width = _call?.WidthOf(_kind, _cursor) ?? 0;
        Next(WireType.SpaceString);
        return Reader.TryReadByteArray(out padded, out bool isNull) && !isNull && padded.Length == width;
    }

    private MessageKind _kind;

    public bool TryReadVersion(out byte major, out byte minor)
    {
        Next(WireType.Version);
        minor = 0;
        return Reader.TryReadByte(out major) && Reader.TryReadByte(out minor);
    }

    /// <summary>'ay': either data (<paramref name="present"/>) or only a length.</summary>
    public bool TryReadByteArray(out bool present, out WireBytes data, out uint length)
    {
        Next(WireType.ByteArray);
        data = WireBytes.Null;
        length = 0;
        present = false;
        if (!Reader.TryReadByte(out byte valid))
            return false;
        present = valid != 0;
        if (!present)
            return Reader.TryReadUInt32(out length);
        if (!WireBytes.TryRead(Reader, out data))
            return false;
        length = (uint)data.Length;
        return true;
    }

    public bool TryReadByteBuffer(out uint capacity)
    {
        Next(WireType.ByteBuffer);
        return Reader.TryReadUInt32(out capacity);
    }

    /// <summary>'au' header; when present the caller reads <paramref name="count"/> values with <see cref="TryReadULongElement"/>.</summary>
    public bool TryReadULongArrayHeader(out bool present, out uint count)
    {
        Next(WireType.ULongArray);
        count = 0;
        present = false;
        if (!Reader.TryReadByte(out byte valid) || !Reader.TryReadUInt32(out count))
            return false;
        present = valid != 0;
        // A present array must actually be in the message: no trusting the count.
        return !present || count <= Reader.Remaining / 8;
    }

    public bool TryReadULongElement(out ulong value) => Reader.TryReadUInt64(out value);

    public bool TryReadULongBuffer(out uint capacity)
    {
        Next(WireType.ULongBuffer);
        return Reader.TryReadUInt32(out capacity);
    }

    public bool TryReadAttributeArray(out WireAttribute[] attributes)
    {
        Next(WireType.AttributeArray);
        return AttributeCodec.TryReadArray(Reader, Profile, out attributes);
    }

    /// <summary>'aA' header only, for callers that stream the attributes (the module filling caller templates).</summary>
    public bool TryReadAttributeArrayCount(out uint count)
    {
        Next(WireType.AttributeArray);
        return Reader.TryReadUInt32(out count) && count <= Reader.Remaining / 5 && count <= AttributeCodec.MaxArrayCount;
    }

    /// <summary>
    /// An 'fA' array. p11-kit's client (0.25.4 on) writes an empty nested count after a template
    /// entry whose buffer is non-NULL but of length 0, which its own server (and this reader) take
    /// for the next entry. 'fA' ends its message (C_GetAttributeValue's "uufA"), so when the plain
    /// reading does not end where the message ends, the form with those counts is tried.
    /// </summary>
    /// <summary>The last 'fA' array read was in p11-kit's client form (which p11-kit's own server misreads).</summary>
    public bool ReadP11KitClientForm { get; private set; }

    public bool TryReadAttributeBuffer(long maxTotalBytes, out WireAttributeBuffer[] buffers)
    {
        Next(WireType.AttributeBuffer);
        int start = Reader.Position;
        bool last = _cursor == _parts.Length;
        ReadP11KitClientForm = false;
        if (AttributeCodec.TryReadBufferArray(Reader, Profile, maxTotalBytes, out buffers) && (Reader.AtEnd || !last))
            return true;
        if (!last)
            return false;
        Reader.Rewind(start);
        return ReadP11KitClientForm = AttributeCodec.TryReadBufferArrayEndingMessage(Reader, Profile, maxTotalBytes, out buffers);
    }

    public bool TryReadMechanism(out WireMechanism mechanism)
    {
        Next(WireType.Mechanism);
        return MechanismCodec.TryDecode(Reader, Profile, out mechanism);
    }

    public bool TryReadMechanismUpdate(ulong mechanismType, out MechanismUpdate update)
    {
        Next(WireType.MechanismUpdate);
        return MechanismCodec.TryDecodeUpdate(Reader, Profile, mechanismType, out update);
    }

    public bool TryReadMessageParameter(out WireMessageParameter parameter)
    {
        Next(WireType.MessageParameter);
        return MessageParameterCodec.TryDecode(Reader, out parameter);
    }

    public bool TryReadMessageParameterUpdate(out MessageParameterUpdate update)
    {
        Next(WireType.MessageParameterUpdate);
        return MessageParameterCodec.TryDecodeUpdate(Reader, out update);
    }
}
