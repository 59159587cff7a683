using P11Proxy.Pkcs11;
using P11Proxy.Wire;

namespace P11Proxy.Wire.Edge;

/// <summary>
/// The mechanisms the caller's message-based encryption and decryption were started with, per
/// session of one connection: they decide which structure the caller's per-message parameter is.
/// Set when C_Message{Encrypt,Decrypt}Init succeeds, dropped at a successful Final and at
/// C_CloseSession. A stale entry (a handle reused without a new Init) cannot do harm: the broker
/// keeps its own record and builds a structure only for the operation the module really has.
/// </summary>
public sealed class MessageOperations
{
    private readonly Lock _gate = new();
    private readonly Dictionary<(nuint Session, bool Encrypt), ulong> _mechanisms = new();

    public void Started(nuint session, bool encrypt, ulong? mechanism)
    {
        lock (_gate)
        {
            if (mechanism is { } m) _mechanisms[(session, encrypt)] = m;
            else _mechanisms.Remove((session, encrypt));
        }
    }

    public void Ended(nuint session, bool encrypt)
    {
        lock (_gate) _mechanisms.Remove((session, encrypt));
    }

    public void Closed(nuint session)
    {
        lock (_gate)
        {
            _mechanisms.Remove((session, true));
            _mechanisms.Remove((session, false));
        }
    }

    /// <summary>The operation's mechanism, or null when the caller started none on this session.</summary>
    public ulong? Mechanism(nuint session, bool encrypt)
    {
        lock (_gate) return _mechanisms.TryGetValue((session, encrypt), out var m) ? m : null;
    }
}

/// <summary>
/// The caller's per-message parameter structure, read into its by-value wire form, and what the
/// broker reports the module wrote copied back into the caller's buffers: only into the buffers
/// the structure names, only with exactly their lengths.
/// </summary>
public static unsafe class MessageParameterMarshal
{
    /// <summary>The caller's buffers as they were when the call was sent (the structure may change meanwhile).</summary>
    public readonly struct CallerBuffers(byte* iv, int ivLength, byte* tag, int tagLength)
    {
        public readonly byte* Iv = iv;
        public readonly int IvLength = ivLength;
        public readonly byte* Tag = tag;
        public readonly int TagLength = tagLength;
    }

    /// <summary>
    /// Reads the caller's parameter as the structure <paramref name="form"/> names. Returns null
    /// with the wire form, or why it cannot be carried (a length that is not the structure's, a
    /// buffer over the limit, lengths that disagree).
    /// </summary>
    public static string? FromCaller(MessageParameterForm form, void* parameter, nuint length,
        out WireMessageParameter wire, out CallerBuffers buffers)
    {
        wire = WireMessageParameter.Absent;
        buffers = default;
        nuint expected = form switch
        {
            MessageParameterForm.Gcm => (nuint)sizeof(CK_GCM_MESSAGE_PARAMS),
            MessageParameterForm.Ccm => (nuint)sizeof(CK_CCM_MESSAGE_PARAMS),
            MessageParameterForm.SalsaChaChaPoly => (nuint)sizeof(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS),
            _ => 0,
        };
        if (expected == 0)
            return "the operation's mechanism has no per-message parameter this module can carry";
        if (length != expected)
            return $"a {length}-byte parameter where the operation's mechanism takes a {form} structure of {expected} bytes";
        byte* iv, tag;
        nuint ivLength, tagLength;
        switch (form)
        {
            case MessageParameterForm.Gcm:
            {
                var p = *(CK_GCM_MESSAGE_PARAMS*)parameter;
                if (p.ulTagBits > (nuint)MessageParameterCodec.MaxBufferLength * 8)
                    return $"ulTagBits {p.ulTagBits}";
                iv = p.pIv; ivLength = p.ulIvLen; tag = p.pTag; tagLength = (p.ulTagBits + 7) / 8;
                if (Bounded(ivLength, tagLength) is { } problem) return problem;
                wire = WireMessageParameter.Gcm(Bytes(iv, ivLength), p.ulIvFixedBits, p.ivGenerator, Bytes(tag, tagLength), p.ulTagBits);
                break;
            }
            case MessageParameterForm.Ccm:
            {
                var p = *(CK_CCM_MESSAGE_PARAMS*)parameter;
                iv = p.pNonce; ivLength = p.ulNonceLen; tag = p.pMAC; tagLength = p.ulMACLen;
                if (Bounded(ivLength, tagLength) is { } problem) return problem;
                wire = WireMessageParameter.Ccm(p.ulDataLen, Bytes(iv, ivLength), p.ulNonceFixedBits, p.nonceGenerator, Bytes(tag, tagLength));
                break;
            }
            default:
            {
                var p = *(CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS*)parameter;
                iv = p.pNonce; ivLength = p.ulNonceLen; tag = p.pTag; tagLength = MessageParameterCodec.Poly1305TagLength;
                if (Bounded(ivLength, tagLength) is { } problem) return problem;
                wire = WireMessageParameter.SalsaChaChaPoly(Bytes(iv, ivLength), Bytes(tag, tagLength));
                break;
            }
        }
        if (MessageParameterCodec.Problem(wire) is { } inconsistent)
            return inconsistent;
        buffers = new CallerBuffers(iv, iv == null ? 0 : (int)ivLength, tag, tag == null ? 0 : (int)tagLength);
        return null;
    }

    private static string? Bounded(nuint ivLength, nuint tagLength) =>
        ivLength > MessageParameterCodec.MaxBufferLength || tagLength > MessageParameterCodec.MaxBufferLength
            ? $"an IV of {ivLength} or a tag of {tagLength} bytes (at most {MessageParameterCodec.MaxBufferLength})"
            : null;

    /// <summary>The bytes of a caller buffer; a NULL pointer stays NULL (the module then gets NULL, length 0).</summary>
    private static WireBytes Bytes(byte* data, nuint length) =>
        data == null ? WireBytes.Null : WireBytes.Of(new ReadOnlySpan<byte>(data, (int)length).ToArray());

    /// <summary>
    /// Copies what the module wrote into the caller's buffers. False, with nothing written, when the
    /// broker's update does not fit them exactly: a broker that does so is broken or lying.
    /// </summary>
    public static bool Apply(in MessageParameterUpdate update, in CallerBuffers buffers)
    {
        if (!update.Iv.IsNull && (buffers.Iv == null || update.Iv.Length != buffers.IvLength)) return false;
        if (!update.Tag.IsNull && (buffers.Tag == null || update.Tag.Length != buffers.TagLength)) return false;
        if (!update.Iv.IsNull) update.Iv.Data.Span.CopyTo(new Span<byte>(buffers.Iv, buffers.IvLength));
        if (!update.Tag.IsNull) update.Tag.Data.Span.CopyTo(new Span<byte>(buffers.Tag, buffers.TagLength));
        return true;
    }
}
