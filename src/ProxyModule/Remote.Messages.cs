using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// The PKCS #11 3.0 message-based calls, in one place. Their per-message parameter (a
/// CK_GCM_MESSAGE_PARAMS and its kin) holds pointers into the caller's memory, which p11-kit's wire
/// form would carry as raw bytes: the module never sends those. With a broker that announced typed
/// message parameters (ours; see <see cref="Capabilities"/>) the encryption and decryption calls
/// carry the parameter by value, read as the structure the operation's mechanism takes, and copy
/// what the module wrote into it (a generated IV, a tag) back into the caller's buffers. With any
/// other peer only an absent parameter (NULL, or empty) travels, and an operation whose mechanism
/// needs one is refused at its start.
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

    // ---- starting and ending encryption and decryption ------------------------------------------------

    /// <summary>
    /// C_MessageEncryptInit / C_MessageDecryptInit. A mechanism whose per-message parameters hold
    /// pointers is refused with CKR_MECHANISM_INVALID by a peer without typed parameters (p11-kit),
    /// as p11-kit's client refuses mechanisms it cannot carry: NSS then uses C_EncryptInit instead.
    /// </summary>
    public static ulong MessageCryptInit(RpcCallId id, nuint session, CK_MECHANISM* mechanism, nuint key)
    {
        bool encrypt = id == RpcCallId.C_MessageEncryptInit;
        ulong rv = ModuleState.TryGet(out var connection);
        if (rv != CKR_OK) return rv;
        if (mechanism != null && !connection.Profile.TypedMessageParameters && connection.Profile.Knows(CallTable.Get(id)) &&
            MessageParameterCodec.FormFor(mechanism->mechanism) != MessageParameterForm.Absent)
        {
            Log.Error($"{id}: {Pkcs11Names.Mechanism(mechanism->mechanism) ?? $"mechanism 0x{(ulong)mechanism->mechanism:x}"} takes per-message " +
                      $"parameters that hold pointers, which the broker at {connection.Address} (p11-kit's protocol) cannot carry; " +
                      "CKR_MECHANISM_INVALID (p11proxy-broker carries them)");
            return CKR_MECHANISM_INVALID;
        }
        rv = Init(id, session, mechanism, key);
        if (rv == CKR_OK)
            connection.Messages.Started(session, encrypt, mechanism == null ? null : mechanism->mechanism);
        return rv;
    }

    public static ulong MessageCryptFinal(RpcCallId id, nuint session)
    {
        ulong rv = ModuleState.TryGet(out var connection);
        if (rv != CKR_OK) return rv;
        rv = Session(id, session);
        if (rv == CKR_OK) connection.Messages.Ended(session, id == RpcCallId.C_MessageEncryptFinal);
        return rv;
    }

    /// <summary>C_CloseSession, which also ends the session's message operations.</summary>
    public static ulong CloseSession(nuint session)
    {
        ulong rv = Session(RpcCallId.C_CloseSession, session);
        if (rv == CKR_OK && ModuleState.TryGet(out var connection) == CKR_OK) connection.Messages.Closed(session);
        return rv;
    }

    // ---- typed parameters -------------------------------------------------------------------------------

    /// <summary>
    /// Writes the session and the caller's parameter in typed form ('T'), read as the structure the
    /// operation's mechanism takes. With no operation started the module gets NULL and answers for
    /// itself; a parameter that cannot be read as that structure is refused.
    /// </summary>
    private static ulong WriteTypedParameter(Connection connection, CallContext context, RpcCallId id, bool encrypt, nuint session,
        nuint brokerSession, void* parameter, nuint parameterLength, out MessageParameterMarshal.CallerBuffers buffers)
    {
        buffers = default;
        var wire = WireMessageParameter.Absent;
        if (parameter != null && parameterLength != 0 && connection.Messages.Mechanism(session, encrypt) is { } mechanism)
        {
            var form = MessageParameterCodec.FormFor(mechanism);
            string? problem = MessageParameterMarshal.FromCaller(form, parameter, parameterLength, out wire, out buffers);
            if (problem is not null)
            {
                Log.Error($"{id}: refused {problem} (operation of {Pkcs11Names.Mechanism(mechanism) ?? $"mechanism 0x{mechanism:x}"}); " +
                          "CKR_MECHANISM_PARAM_INVALID");
                return CKR_MECHANISM_PARAM_INVALID;
            }
        }
        context.Request.WriteULong(brokerSession);
        context.Request.WriteMessageParameter(wire);
        return CKR_OK;
    }

    /// <summary>
    /// Reads a typed reply ("uU" then, with an output, "ay"): copies what the module wrote into the
    /// caller's parameter buffers, then the output by PKCS#11's size rules; returns the call's CK_RV.
    /// </summary>
    private static ulong ReadTypedReply(Connection connection, CallContext context, in MessageParameterMarshal.CallerBuffers buffers,
        byte* output, nuint* outputLength, nuint capacity, bool hasOutput)
    {
        ulong rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        var reply = context.Response;
        if (!reply.TypedForm || !reply.TryReadULong(out ulong callRv) || !reply.TryReadMessageParameterUpdate(out var update))
            return Malformed(context);
        if (!MessageParameterMarshal.Apply(update, buffers))
        {
            Log.Error($"{context.Request.Call?.Name}: the broker reported a parameter update that does not fit the caller's buffers");
            return CKR_DEVICE_ERROR;
        }
        if (!hasOutput)
            return reply.Complete ? callRv : Malformed(context);
        if (callRv != CKR_OK && callRv != CKR_BUFFER_TOO_SMALL)
            return reply.TryReadByteArray(out _, out _, out _) && reply.Complete ? callRv : Malformed(context);
        rv = CallerArguments.ReadOutput(reply, output, outputLength, capacity);
        if (rv == CKR_DEVICE_ERROR || !reply.Complete) return Malformed(context);
        // The broker's CK_RV stands, unless the output does not fit what the caller gave.
        return rv == CKR_OK ? callRv : rv;
    }

    /// <summary>C_EncryptMessage / C_DecryptMessage ("uayayayfy" → "ay"; typed "uTayayfy" → "uUay").</summary>
    public static ulong MessageOneShot(RpcCallId id, nuint session, void* parameter, nuint parameterLength,
        byte* associated, nuint associatedLength, byte* input, nuint inputLength, byte* output, nuint* outputLength)
    {
        if (outputLength == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        bool typed = connection.Profile.TypedMessageParameters;
        var buffers = default(MessageParameterMarshal.CallerBuffers);
        if (typed)
        {
            rv = WriteTypedParameter(connection, context, id, id == RpcCallId.C_EncryptMessage, session, brokerSession,
                parameter, parameterLength, out buffers);
            if (rv != CKR_OK) return rv;
        }
        else
        {
            rv = CheckRawMessageParameter(id, parameter, parameterLength);
            if (rv != CKR_OK) return rv;
            context.Request.WriteULong(brokerSession);
            context.Request.WriteByteArray(WireBytes.Null);
        }
        rv = CallerArguments.WriteInput(context.Request, associated, associatedLength);
        if (rv == CKR_OK) rv = CallerArguments.WriteInput(context.Request, input, inputLength);
        if (rv != CKR_OK) return rv;
        nuint capacity = *outputLength;
        CallerArguments.WriteOutputCapacity(context.Request, output, outputLength);
        return typed
            ? ReadTypedReply(connection, context, buffers, output, outputLength, capacity, hasOutput: true)
            : ExchangeForOutput(connection, context, output, outputLength, capacity);
    }

    /// <summary>C_EncryptMessageBegin / C_DecryptMessageBegin ("uayay"; typed "uTay" → "uU").</summary>
    public static ulong MessageBegin(RpcCallId id, nuint session, void* parameter, nuint parameterLength, byte* associated, nuint associatedLength)
    {
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        bool typed = connection.Profile.TypedMessageParameters;
        var buffers = default(MessageParameterMarshal.CallerBuffers);
        if (typed)
        {
            rv = WriteTypedParameter(connection, context, id, id == RpcCallId.C_EncryptMessageBegin, session, brokerSession,
                parameter, parameterLength, out buffers);
            if (rv != CKR_OK) return rv;
        }
        else
        {
            rv = CheckRawMessageParameter(id, parameter, parameterLength);
            if (rv != CKR_OK) return rv;
            context.Request.WriteULong(brokerSession);
            context.Request.WriteByteArray(WireBytes.Null);
        }
        rv = CallerArguments.WriteInput(context.Request, associated, associatedLength);
        if (rv != CKR_OK) return rv;
        return typed ? ReadTypedReply(connection, context, buffers, null, null, 0, hasOutput: false) : Finish(connection, context);
    }

    /// <summary>C_EncryptMessageNext / C_DecryptMessageNext ("uayayfyu" → "ay"; typed "uTayfyu" → "uUay").</summary>
    public static ulong MessageNext(RpcCallId id, nuint session, void* parameter, nuint parameterLength,
        byte* input, nuint inputLength, byte* output, nuint* outputLength, nuint flags)
    {
        if (outputLength == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        bool typed = connection.Profile.TypedMessageParameters;
        var buffers = default(MessageParameterMarshal.CallerBuffers);
        if (typed)
        {
            rv = WriteTypedParameter(connection, context, id, id == RpcCallId.C_EncryptMessageNext, session, brokerSession,
                parameter, parameterLength, out buffers);
            if (rv != CKR_OK) return rv;
        }
        else
        {
            rv = CheckRawMessageParameter(id, parameter, parameterLength);
            if (rv != CKR_OK) return rv;
            context.Request.WriteULong(brokerSession);
            context.Request.WriteByteArray(WireBytes.Null);
        }
        rv = CallerArguments.WriteInput(context.Request, input, inputLength);
        if (rv != CKR_OK) return rv;
        nuint capacity = *outputLength;
        CallerArguments.WriteOutputCapacity(context.Request, output, outputLength);
        context.Request.WriteULong(flags);
        return typed
            ? ReadTypedReply(connection, context, buffers, output, outputLength, capacity, hasOutput: true)
            : ExchangeForOutput(connection, context, output, outputLength, capacity);
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
        rv = CallerArguments.WriteInput(context.Request, data, dataLength);
        if (rv != CKR_OK) return rv;
        nuint capacity = *signatureLength;
        CallerArguments.WriteOutputCapacity(context.Request, signature, signatureLength);
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
        rv = CallerArguments.WriteInput(context.Request, data, dataLength);
        if (rv != CKR_OK) return rv;
        context.Request.WriteByte(wanted ? (byte)1 : (byte)0);
        nuint capacity = *length;
        CallerArguments.WriteOutputCapacity(context.Request, buffer, length);
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
        rv = CallerArguments.WriteInput(context.Request, data, dataLength);
        if (rv == CKR_OK) rv = CallerArguments.WriteInput(context.Request, signature, signatureLength);
        if (rv != CKR_OK) return rv;
        return Finish(connection, context);
    }
}
