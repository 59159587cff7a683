using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire;

/// <summary>Which structure a message-based call's per-message parameter is, decided by the operation's mechanism.</summary>
public enum MessageParameterForm : byte
{
    /// <summary>pParameter NULL (length 0): nothing travels.</summary>
    Absent = 0,

    /// <summary>CK_GCM_MESSAGE_PARAMS { pIv, ulIvLen, ulIvFixedBits, ivGenerator, pTag, ulTagBits }.</summary>
    Gcm = 1,

    /// <summary>CK_CCM_MESSAGE_PARAMS { ulDataLen, pNonce, ulNonceLen, ulNonceFixedBits, nonceGenerator, pMAC, ulMACLen }.</summary>
    Ccm = 2,

    /// <summary>CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS { pNonce, ulNonceLen, pTag } (a 16-byte Poly1305 tag).</summary>
    SalsaChaChaPoly = 3,
}

/// <summary>
/// A per-message parameter by value: its buffers (IV or nonce, tag or MAC) as the bytes they hold,
/// its numbers as numbers, never a pointer. The length fields of the C structure follow from the
/// buffers (ulIvLen, ulNonceLen, ulMACLen are their lengths); ulTagBits travels, and must agree
/// with the tag's length. <see cref="Iv"/> is pIv or pNonce, <see cref="Tag"/> pTag or pMAC: the
/// tag travels even when the call only writes it, so that the receiver can tell what the module
/// changed (<see cref="MessageParameterUpdate"/>).
/// </summary>
public readonly record struct WireMessageParameter(
    MessageParameterForm Form, WireBytes Iv, ulong IvFixedBits, ulong IvGenerator, WireBytes Tag, ulong TagBits, ulong DataLength)
{
    public static WireMessageParameter Absent => new(MessageParameterForm.Absent, WireBytes.Null, 0, 0, WireBytes.Null, 0, 0);

    public static WireMessageParameter Gcm(WireBytes iv, ulong ivFixedBits, ulong ivGenerator, WireBytes tag, ulong tagBits) =>
        new(MessageParameterForm.Gcm, iv, ivFixedBits, ivGenerator, tag, tagBits, 0);

    public static WireMessageParameter Ccm(ulong dataLength, WireBytes nonce, ulong nonceFixedBits, ulong nonceGenerator, WireBytes mac) =>
        new(MessageParameterForm.Ccm, nonce, nonceFixedBits, nonceGenerator, mac, 0, dataLength);

    public static WireMessageParameter SalsaChaChaPoly(WireBytes nonce, WireBytes tag) =>
        new(MessageParameterForm.SalsaChaChaPoly, nonce, 0, 0, tag, 0, 0);
}

/// <summary>
/// What a module wrote into a message parameter during a call, to be copied into the caller's
/// structure: the IV or nonce (a generated one) and the tag or MAC (an encryption's). A NULL field
/// was left as it was.
/// </summary>
public readonly record struct MessageParameterUpdate(WireBytes Iv, WireBytes Tag)
{
    public static MessageParameterUpdate None => new(WireBytes.Null, WireBytes.Null);

    public bool IsEmpty => Iv.IsNull && Tag.IsNull;
}

/// <summary>
/// The typed encoding of message parameters ('T' in a request, 'U' in a reply), used between our
/// module and our broker once the broker announced <see cref="Capabilities.TypedMessageParameters"/>.
///   T: form byte, then per form
///        Gcm:              iv, ulIvFixedBits, ivGenerator, tag, ulTagBits
///        Ccm:              ulDataLen, nonce, ulNonceFixedBits, nonceGenerator, mac
///        SalsaChaChaPoly:  nonce, tag
///      (byte strings as p11-kit's length-prefixed arrays, 0xffffffff for NULL; numbers as 64 bits)
///   U: iv, tag (each NULL when unchanged)
/// Decoding bounds every buffer (<see cref="MaxBufferLength"/>) and checks that the structure the
/// broker will build is consistent (<see cref="Problem"/>): no module is handed a length larger
/// than the buffer it describes.
/// </summary>
public static class MessageParameterCodec
{
    /// <summary>
    /// Longest IV, nonce, tag or MAC carried. Real ones are 7 to 16 bytes (GCM allows longer IVs;
    /// 4 KiB is far beyond any in use).
    /// </summary>
    public const int MaxBufferLength = 4096;

    /// <summary>The Poly1305 tag of CK_SALSA20_CHACHA20_POLY1305_MSG_PARAMS, which has no length field.</summary>
    public const int Poly1305TagLength = 16;

    /// <summary>The form of the per-message parameter of an operation started with <paramref name="mechanism"/>, or Absent when none is known.</summary>
    public static MessageParameterForm FormFor(ulong mechanism) => mechanism switch
    {
        CKM_AES_GCM => MessageParameterForm.Gcm,
        CKM_AES_CCM => MessageParameterForm.Ccm,
        CKM_CHACHA20_POLY1305 or CKM_SALSA20_POLY1305 => MessageParameterForm.SalsaChaChaPoly,
        _ => MessageParameterForm.Absent,
    };

    public static void Encode(WireWriter writer, in WireMessageParameter parameter)
    {
        writer.WriteByte((byte)parameter.Form);
        switch (parameter.Form)
        {
            case MessageParameterForm.Gcm:
                parameter.Iv.Write(writer);
                writer.WriteUInt64(parameter.IvFixedBits);
                writer.WriteUInt64(parameter.IvGenerator);
                parameter.Tag.Write(writer);
                writer.WriteUInt64(parameter.TagBits);
                break;
            case MessageParameterForm.Ccm:
                writer.WriteUInt64(parameter.DataLength);
                parameter.Iv.Write(writer);
                writer.WriteUInt64(parameter.IvFixedBits);
                writer.WriteUInt64(parameter.IvGenerator);
                parameter.Tag.Write(writer);
                break;
            case MessageParameterForm.SalsaChaChaPoly:
                parameter.Iv.Write(writer);
                parameter.Tag.Write(writer);
                break;
        }
    }

    /// <summary>Decodes a 'T' value; false on truncated input, an unknown form or a buffer over the limit.</summary>
    public static bool TryDecode(WireReader reader, out WireMessageParameter parameter)
    {
        parameter = WireMessageParameter.Absent;
        if (!reader.TryReadByte(out byte form))
            return false;
        WireBytes iv, tag;
        ulong fixedBits, generator, tagBits, dataLength;
        switch ((MessageParameterForm)form)
        {
            case MessageParameterForm.Absent:
                return true;
            case MessageParameterForm.Gcm:
                if (!TryReadBuffer(reader, out iv) || !reader.TryReadUInt64(out fixedBits) || !reader.TryReadUInt64(out generator) ||
                    !TryReadBuffer(reader, out tag) || !reader.TryReadUInt64(out tagBits))
                    return false;
                parameter = WireMessageParameter.Gcm(iv, fixedBits, generator, tag, tagBits);
                return true;
            case MessageParameterForm.Ccm:
                if (!reader.TryReadUInt64(out dataLength) || !TryReadBuffer(reader, out iv) || !reader.TryReadUInt64(out fixedBits) ||
                    !reader.TryReadUInt64(out generator) || !TryReadBuffer(reader, out tag))
                    return false;
                parameter = WireMessageParameter.Ccm(dataLength, iv, fixedBits, generator, tag);
                return true;
            case MessageParameterForm.SalsaChaChaPoly:
                if (!TryReadBuffer(reader, out iv) || !TryReadBuffer(reader, out tag))
                    return false;
                parameter = WireMessageParameter.SalsaChaChaPoly(iv, tag);
                return true;
            default:
                return false;
        }
    }

    /// <summary>
    /// Why a decoded (or about to be sent) parameter cannot be handed to a module, or null when it
    /// can: a tag length that disagrees with ulTagBits, a missing Poly1305 tag, more fixed IV bits
    /// than the IV has. A module would write or keep that many bytes in a buffer that is smaller.
    /// </summary>
    public static string? Problem(in WireMessageParameter parameter)
    {
        if (parameter.Iv.Length > MaxBufferLength || parameter.Tag.Length > MaxBufferLength)
            return $"a buffer over {MaxBufferLength} bytes";
        switch (parameter.Form)
        {
            case MessageParameterForm.Gcm:
                // Bounded first: (ulTagBits + 7) / 8 must not wrap around.
                if (parameter.TagBits > (ulong)MaxBufferLength * 8 || (parameter.TagBits + 7) / 8 != (ulong)parameter.Tag.Length)
                    return $"ulTagBits {parameter.TagBits} for a tag of {parameter.Tag.Length} bytes";
                if (parameter.IvFixedBits > (ulong)parameter.Iv.Length * 8)
                    return $"ulIvFixedBits {parameter.IvFixedBits} for an IV of {parameter.Iv.Length} bytes";
                return null;
            case MessageParameterForm.Ccm:
                if (parameter.IvFixedBits > (ulong)parameter.Iv.Length * 8)
                    return $"ulNonceFixedBits {parameter.IvFixedBits} for a nonce of {parameter.Iv.Length} bytes";
                return null;
            case MessageParameterForm.SalsaChaChaPoly:
                if (parameter.Tag.IsNull || parameter.Tag.Length != Poly1305TagLength)
                    return $"a tag of {(parameter.Tag.IsNull ? "NULL" : parameter.Tag.Length + " bytes")} (Poly1305 writes {Poly1305TagLength})";
                return null;
            default:
                return null;
        }
    }

    public static void EncodeUpdate(WireWriter writer, in MessageParameterUpdate update)
    {
        update.Iv.Write(writer);
        update.Tag.Write(writer);
    }

    public static bool TryDecodeUpdate(WireReader reader, out MessageParameterUpdate update)
    {
        update = MessageParameterUpdate.None;
        if (!TryReadBuffer(reader, out var iv) || !TryReadBuffer(reader, out var tag))
            return false;
        update = new MessageParameterUpdate(iv, tag);
        return true;
    }

    private static bool TryReadBuffer(WireReader reader, out WireBytes bytes) =>
        WireBytes.TryRead(reader, out bytes) && bytes.Length <= MaxBufferLength;
}
