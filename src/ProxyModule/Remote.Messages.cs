using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// The PKCS #11 3.0 message-based calls with a per-message parameter, in one place. p11-kit's wire
/// form carries that parameter as the raw bytes of the caller's structure, pointers included: the
/// module never sends such bytes. An absent parameter (NULL, or empty) travels as NULL.
/// </summary>
internal static unsafe partial class Remote
{
    /// <summary>CKR_OK when the parameter may travel in p11-kit's form, i.e. when it is absent.</summary>
    private static ulong CheckRawMessageParameter(RpcCallId id, void* parameter, nuint parameterLength)
    {
        if (parameter == null || parameterLength == 0)
            return CKR_OK;
        Log.Error($"{id}: refused a {parameterLength}-byte message parameter: it would travel as raw bytes holding " +
                  "pointers into this process, which the broker cannot use; CKR_MECHANISM_PARAM_INVALID");
        return CKR_MECHANISM_PARAM_INVALID;
    }

    /// <summary>C_EncryptMessage / C_DecryptMessage ("uayayayfy" → "ay").</summary>
    public static ulong MessageOneShot(RpcCallId id, nuint session, void* parameter, nuint parameterLength,
        byte* associated, nuint associatedLength, byte* input, nuint inputLength, byte* output, nuint* outputLength)
    {
        if (outputLength == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = CheckRawMessageParameter(id, parameter, parameterLength);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteByteArray(WireBytes.Null);
        rv = Marshalling.WriteInput(context.Request, associated, associatedLength);
        if (rv == CKR_OK) rv = Marshalling.WriteInput(context.Request, input, inputLength);
        if (rv != CKR_OK) return rv;
        nuint capacity = *outputLength;
        Marshalling.WriteOutputCapacity(context.Request, output, outputLength);
        return ExchangeForOutput(connection, context, output, outputLength, capacity);
    }

    /// <summary>C_EncryptMessageBegin / C_DecryptMessageBegin ("uayay").</summary>
    public static ulong MessageBegin(RpcCallId id, nuint session, void* parameter, nuint parameterLength, byte* associated, nuint associatedLength)
    {
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = CheckRawMessageParameter(id, parameter, parameterLength);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteByteArray(WireBytes.Null);
        rv = Marshalling.WriteInput(context.Request, associated, associatedLength);
        if (rv != CKR_OK) return rv;
        return Finish(connection, context);
    }

    /// <summary>C_EncryptMessageNext / C_DecryptMessageNext ("uayayfyu" → "ay").</summary>
    public static ulong MessageNext(RpcCallId id, nuint session, void* parameter, nuint parameterLength,
        byte* input, nuint inputLength, byte* output, nuint* outputLength, nuint flags)
    {
        if (outputLength == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = CheckRawMessageParameter(id, parameter, parameterLength);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteByteArray(WireBytes.Null);
        rv = Marshalling.WriteInput(context.Request, input, inputLength);
        if (rv != CKR_OK) return rv;
        nuint capacity = *outputLength;
        Marshalling.WriteOutputCapacity(context.Request, output, outputLength);
        context.Request.WriteULong(flags);
        return ExchangeForOutput(connection, context, output, outputLength, capacity);
    }

    /// <summary>C_SignMessage ("uayayfy" → "ay").</summary>
    public static ulong SignMessage(nuint session, void* parameter, nuint parameterLength, byte* data, nuint dataLength,
        byte* signature, nuint* signatureLength)
    {
        if (signatureLength == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_SignMessage, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = CheckRawMessageParameter(RpcCallId.C_SignMessage, parameter, parameterLength);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteByteArray(WireBytes.Null);
        rv = Marshalling.WriteInput(context.Request, data, dataLength);
        if (rv != CKR_OK) return rv;
        nuint capacity = *signatureLength;
        Marshalling.WriteOutputCapacity(context.Request, signature, signatureLength);
        return ExchangeForOutput(connection, context, signature, signatureLength, capacity);
    }

    /// <summary>C_SignMessageBegin / C_VerifyMessageBegin ("uay").</summary>
    public static ulong SignOrVerifyMessageBegin(RpcCallId id, nuint session, void* parameter, nuint parameterLength)
    {
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = CheckRawMessageParameter(id, parameter, parameterLength);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteByteArray(WireBytes.Null);
        return Finish(connection, context);
    }

    /// <summary>C_SignMessageNext ("uayayyfy" → "ay"): a NULL length pointer means "no signature yet".</summary>
    public static ulong SignMessageNext(nuint session, void* parameter, nuint parameterLength, byte* data, nuint dataLength,
        byte* signature, nuint* signatureLength)
    {
        ulong rv = Begin(RpcCallId.C_SignMessageNext, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = CheckRawMessageParameter(RpcCallId.C_SignMessageNext, parameter, parameterLength);
        if (rv != CKR_OK) return rv;
        bool wanted = signatureLength != null;
        nuint none = 0;
        nuint* length = wanted ? signatureLength : &none;
        byte* buffer = wanted ? signature : null;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteByteArray(WireBytes.Null);
        rv = Marshalling.WriteInput(context.Request, data, dataLength);
        if (rv != CKR_OK) return rv;
        context.Request.WriteByte(wanted ? (byte)1 : (byte)0);
        nuint capacity = *length;
        Marshalling.WriteOutputCapacity(context.Request, buffer, length);
        return ExchangeForOutput(connection, context, buffer, length, capacity);
    }

    /// <summary>C_VerifyMessage and C_VerifyMessageNext ("uayayay").</summary>
    public static ulong VerifyMessage(RpcCallId id, nuint session, void* parameter, nuint parameterLength, byte* data, nuint dataLength,
        byte* signature, nuint signatureLength)
    {
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = CheckRawMessageParameter(id, parameter, parameterLength);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteByteArray(WireBytes.Null);
        rv = Marshalling.WriteInput(context.Request, data, dataLength);
        if (rv == CKR_OK) rv = Marshalling.WriteInput(context.Request, signature, signatureLength);
        if (rv != CKR_OK) return rv;
        return Finish(connection, context);
    }
}
