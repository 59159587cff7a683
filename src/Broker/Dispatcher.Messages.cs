using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;
using Id = P11Proxy.Wire.RpcCallId;

namespace P11Proxy.Broker;

/// <summary>
/// The PKCS #11 3.0 message-based calls (C_MessageEncryptInit to C_MessageVerifyFinal), in one
/// place. Their per-message parameter (CK_GCM_MESSAGE_PARAMS and kin) holds pointers into the
/// caller's memory, and p11-kit's wire form carries it as the raw bytes of the C structure: such
/// bytes never reach the backend, whoever sent them. Only an absent (NULL, or empty) parameter does.
/// </summary>
internal sealed unsafe partial class Dispatcher
{
    private ulong MessageCall(Id id) => id switch
    {
        Id.C_MessageEncryptInit => Init((s, m, k) => F->C_MessageEncryptInit(s, m, k)),
        Id.C_MessageDecryptInit => Init((s, m, k) => F->C_MessageDecryptInit(s, m, k)),
        Id.C_MessageSignInit => Init((s, m, k) => F->C_MessageSignInit(s, m, k)),
        Id.C_MessageVerifyInit => Init((s, m, k) => F->C_MessageVerifyInit(s, m, k)),
        Id.C_MessageEncryptFinal => SessionOnly(s => F->C_MessageEncryptFinal(s)),
        Id.C_MessageDecryptFinal => SessionOnly(s => F->C_MessageDecryptFinal(s)),
        Id.C_MessageSignFinal => SessionOnly(s => F->C_MessageSignFinal(s)),
        Id.C_MessageVerifyFinal => SessionOnly(s => F->C_MessageVerifyFinal(s)),
        Id.C_EncryptMessage or Id.C_DecryptMessage => CryptMessage(id),
        Id.C_EncryptMessageBegin or Id.C_DecryptMessageBegin => CryptMessageBegin(id),
        Id.C_EncryptMessageNext or Id.C_DecryptMessageNext => CryptMessageNext(id),
        Id.C_SignMessage => SignMessage(),
        Id.C_SignMessageBegin or Id.C_VerifyMessageBegin => SignOrVerifyMessageBegin(id),
        Id.C_SignMessageNext => SignMessageNext(),
        Id.C_VerifyMessage or Id.C_VerifyMessageNext => VerifyMessage(id),
        _ => Malformed,
    };

    /// <summary>
    /// A message parameter in p11-kit's form ('ay'): the raw bytes of the caller's structure.
    /// Returns whether it may go to the backend (as NULL): only when it is absent or empty.
    /// </summary>
    private bool AcceptRawMessageParameter(in WireBytes parameter, bool present)
    {
        if (!present || parameter.IsNull || parameter.Length == 0)
            return true;
        _log.Warn($"{_client.Peer}: {_request.Call!.Name}: refused a {parameter.Length}-byte message parameter sent as raw " +
                  "bytes: it may hold pointers into the client's memory, so it never reaches the module; CKR_MECHANISM_PARAM_INVALID");
        return false;
    }

    private bool ReadRawMessageParameter(out WireBytes parameter, out bool present) =>
        _request.TryReadByteArray(out present, out parameter, out _);

    /// <summary>C_EncryptMessage / C_DecryptMessage ("uayayayfy" → "ay").</summary>
    private ulong CryptMessage(Id id)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadRawMessageParameter(out var parameter, out bool present) ||
            !ReadInput(out var associated, out var associatedLength) || !ReadInput(out var input, out var inputLength))
            return Malformed;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        if (!AcceptRawMessageParameter(parameter, present)) return CKR_MECHANISM_PARAM_INVALID;
        rv = CallWithOutput(capacity, (o, n) => id == Id.C_EncryptMessage
                ? F->C_EncryptMessage(session, null, 0, associated, associatedLength, input, inputLength, o, n)
                : F->C_DecryptMessage(session, null, 0, associated, associatedLength, input, inputLength, o, n),
            out var buffer, out var length);
        return ReplyOutput(rv, buffer, length);
    }

    /// <summary>C_EncryptMessageBegin / C_DecryptMessageBegin ("uayay").</summary>
    private ulong CryptMessageBegin(Id id)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadRawMessageParameter(out var parameter, out bool present) ||
            !ReadInput(out var associated, out var associatedLength) || !Done)
            return Malformed;
        if (!AcceptRawMessageParameter(parameter, present)) return CKR_MECHANISM_PARAM_INVALID;
        rv = id == Id.C_EncryptMessageBegin
            ? F->C_EncryptMessageBegin(session, null, 0, associated, associatedLength)
            : F->C_DecryptMessageBegin(session, null, 0, associated, associatedLength);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    /// <summary>C_EncryptMessageNext / C_DecryptMessageNext ("uayayfyu" → "ay").</summary>
    private ulong CryptMessageNext(Id id)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadRawMessageParameter(out var parameter, out bool present) || !ReadInput(out var input, out var inputLength))
            return Malformed;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!ReadULong(out var flags) || !Done) return Malformed;
        if (!AcceptRawMessageParameter(parameter, present)) return CKR_MECHANISM_PARAM_INVALID;
        rv = CallWithOutput(capacity, (o, n) => id == Id.C_EncryptMessageNext
                ? F->C_EncryptMessageNext(session, null, 0, input, inputLength, o, n, flags)
                : F->C_DecryptMessageNext(session, null, 0, input, inputLength, o, n, flags),
            out var buffer, out var length);
        return ReplyOutput(rv, buffer, length);
    }

    /// <summary>C_SignMessage ("uayayfy" → "ay").</summary>
    private ulong SignMessage()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadRawMessageParameter(out var parameter, out bool present) || !ReadInput(out var data, out var dataLength))
            return Malformed;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        if (!AcceptRawMessageParameter(parameter, present)) return CKR_MECHANISM_PARAM_INVALID;
        rv = CallWithOutput(capacity, (o, n) => F->C_SignMessage(session, null, 0, data, dataLength, o, n), out var buffer, out var length);
        return ReplyOutput(rv, buffer, length);
    }

    /// <summary>C_SignMessageBegin / C_VerifyMessageBegin ("uay").</summary>
    private ulong SignOrVerifyMessageBegin(Id id)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadRawMessageParameter(out var parameter, out bool present) || !Done) return Malformed;
        if (!AcceptRawMessageParameter(parameter, present)) return CKR_MECHANISM_PARAM_INVALID;
        rv = id == Id.C_SignMessageBegin ? F->C_SignMessageBegin(session, null, 0) : F->C_VerifyMessageBegin(session, null, 0);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    /// <summary>C_SignMessageNext ("uayayyfy" → "ay"): a zero byte means the caller wants no signature yet.</summary>
    private ulong SignMessageNext()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadRawMessageParameter(out var parameter, out bool present) || !ReadInput(out var data, out var dataLength) ||
            !_request.TryReadByte(out byte wanted))
            return Malformed;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        if (!AcceptRawMessageParameter(parameter, present)) return CKR_MECHANISM_PARAM_INVALID;
        if (wanted == 0)
        {
            rv = F->C_SignMessageNext(session, null, 0, data, dataLength, null, null);
            return ReplyOutput(rv, null, 0);
        }
        rv = CallWithOutput(capacity, (o, n) => F->C_SignMessageNext(session, null, 0, data, dataLength, o, n), out var buffer, out var length);
        return ReplyOutput(rv, buffer, length);
    }

    /// <summary>C_VerifyMessage and C_VerifyMessageNext ("uayayay").</summary>
    private ulong VerifyMessage(Id id)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadRawMessageParameter(out var parameter, out bool present) || !ReadInput(out var data, out var dataLength) ||
            !ReadInput(out var signature, out var signatureLength) || !Done)
            return Malformed;
        if (!AcceptRawMessageParameter(parameter, present)) return CKR_MECHANISM_PARAM_INVALID;
        rv = id == Id.C_VerifyMessage
            ? F->C_VerifyMessage(session, null, 0, data, dataLength, signature, signatureLength)
            : F->C_VerifyMessageNext(session, null, 0, data, dataLength, signature, signatureLength);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }
}
