using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;
using Id = P11Proxy.Wire.RpcCallId;

namespace P11Proxy.Broker;

/// <summary>
/// The PKCS #11 3.0 message-based calls (C_MessageEncryptInit to C_MessageVerifyFinal), in one
/// place. Their per-message parameter (CK_GCM_MESSAGE_PARAMS and kin) holds pointers into the
/// caller's memory, and p11-kit's wire form carries it as the raw bytes of the C structure: such
/// bytes never reach the module, whoever sent them; only an absent (NULL, or empty) parameter does.
/// A client that may be ours was offered the typed form (<see cref="Capabilities"/>): there the
/// encryption and decryption calls carry the parameter by value, as the structure the operation's
/// mechanism calls for (<see cref="MessageParameterCodec"/>), the broker builds it in its own
/// memory, and the reply carries the CK_RV and what the module wrote into it.
/// </summary>
internal sealed unsafe partial class Dispatcher
{
    private static readonly byte[] AnnouncementBytes = Capabilities.Announcement.ToArray();

    /// <summary>Whether the request being handled came in the typed form (a client that took up the offer).</summary>
    private bool Typed => _request.TypedForm;

    // ---- starting and ending encryption and decryption ------------------------------------------------

    /// <summary>
    /// C_MessageEncryptInit / C_MessageDecryptInit ("uMu"). The mechanism is remembered for the
    /// session, under its gate: it decides how the next per-message parameters are built. A client
    /// without the typed form cannot give a mechanism whose parameters hold pointers anything
    /// usable, so such an operation is refused here, as p11-kit's client refuses a mechanism it
    /// cannot carry (NSS then falls back to C_EncryptInit).
    /// </summary>
    private ulong MessageCryptInit(bool encrypt)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadMechanism(out var mechanism);
        if (rv != CKR_OK) return rv;
        if (!ReadULong(out var key) || !Done) return Malformed;
        if (mechanism != null && !_request.Profile.TypedMessageParameters &&
            MessageParameterCodec.FormFor(mechanism->mechanism) != MessageParameterForm.Absent)
        {
            _log.Warn($"{_client.Peer}: {_request.Call!.Name}: {Pkcs11Names.Mechanism(mechanism->mechanism) ?? $"mechanism 0x{(ulong)mechanism->mechanism:x}"} " +
                      "takes per-message parameters that hold pointers, which this client's protocol (p11-kit's) cannot carry; CKR_MECHANISM_INVALID");
            return CKR_MECHANISM_INVALID;
        }
        var messages = _client.MessagesOf(session);
        lock (messages.Gate)
        {
            rv = encrypt ? F->C_MessageEncryptInit(session, mechanism, key) : F->C_MessageDecryptInit(session, mechanism, key);
            if (rv == CKR_OK)
                messages.SetMechanism(encrypt, mechanism == null ? SessionMessages.NoMechanism : mechanism->mechanism);
        }
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong MessageCryptFinal(bool encrypt)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!Done) return Malformed;
        var messages = _client.MessagesOf(session);
        lock (messages.Gate)
        {
            rv = encrypt ? F->C_MessageEncryptFinal(session) : F->C_MessageDecryptFinal(session);
            if (rv == CKR_OK) messages.SetMechanism(encrypt, SessionMessages.NoMechanism);
        }
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    // ---- the per-message parameter -----------------------------------------------------------------------

    /// <summary>
    /// The request's parameter: 'T' in the typed form, else p11-kit's 'ay' (then only an absent one is
    /// usable, which <see cref="AcceptParameter"/> decides once the whole request was read).
    /// </summary>
    private bool ReadMessageParameter(out WireMessageParameter typed, out WireBytes raw, out bool present)
    {
        typed = WireMessageParameter.Absent;
        raw = WireBytes.Null;
        present = false;
        return Typed ? _request.TryReadMessageParameter(out typed) : _request.TryReadByteArray(out present, out raw, out _);
    }

    /// <summary>A parameter in p11-kit's form may go to the module (as NULL) only when it is absent or empty.</summary>
    private bool AcceptRawMessageParameter(in WireBytes parameter, bool present)
    {
        if (!present || parameter.IsNull || parameter.Length == 0)
            return true;
        _log.Warn($"{_client.Peer}: {_request.Call!.Name}: refused a {parameter.Length}-byte message parameter sent as raw " +
                  "bytes: it may hold pointers into the client's memory, so it never reaches the module; CKR_MECHANISM_PARAM_INVALID");
        return false;
    }

    /// <summary>
    /// Whether a typed parameter may be built for the session's operation: it must be the structure
    /// the operation's mechanism takes, and consistent. With no operation known the module gets NULL
    /// and answers for itself (it has no operation either: only a successful start makes one).
    /// </summary>
    private bool AcceptTypedParameter(in WireMessageParameter parameter, ulong mechanism, out bool sendNull)
    {
        sendNull = parameter.Form == MessageParameterForm.Absent || mechanism == SessionMessages.NoMechanism;
        if (sendNull) return true;
        var expected = MessageParameterCodec.FormFor(mechanism);
        string? problem = expected != parameter.Form
            ? $"a {parameter.Form} parameter for an operation of {Pkcs11Names.Mechanism(mechanism) ?? $"mechanism 0x{mechanism:x}"}"
            : MessageParameterCodec.Problem(parameter);
        if (problem is null) return true;
        _log.Warn($"{_client.Peer}: {_request.Call!.Name}: refused {problem}; CKR_MECHANISM_PARAM_INVALID");
        return false;
    }

    /// <summary>The reply of a typed call: the CK_RV, what the module wrote into the parameter, then the output ('ay') if the call has one.</summary>
    private ulong TypedReply(ulong rv, in MessageParameterUpdate update, bool hasOutput, byte* buffer, nuint length)
    {
        BeginReply();
        _reply.WriteULong(rv);
        _reply.WriteMessageParameterUpdate(update);
        if (!hasOutput) return CKR_OK;
        if (rv == CKR_OK || rv == CKR_BUFFER_TOO_SMALL) WriteOutput(rv, buffer, length);
        else _reply.WriteByteArrayLengthOnly(0);
        return CKR_OK;
    }

    /// <summary>
    /// An output buffer for a message call. AEAD output is as long as the input, so at most the input
    /// and 64 KiB more is allocated whatever capacity the client claims; unlike other calls the
    /// module is never asked for the size first, because a second call could consume a generated IV.
    /// </summary>
    private ulong CallForMessageOutput(uint capacity, nuint inputLength, OutputCall call, out byte* buffer, out nuint length)
    {
        buffer = null;
        nuint size = 0;
        ulong rv;
        if (capacity == 0)
        {
            rv = call(null, &size);
            length = size;
            return rv;
        }
        if (capacity == RpcMessageWriter.ZeroLengthBuffer)
        {
            buffer = (byte*)_arena.Alloc(1);
            rv = call(buffer, &size);
            length = size;
            return Written(rv, 0, ref length);
        }
        size = Math.Min((nuint)capacity, inputLength + 64 * 1024);
        buffer = (byte*)_arena.TryAllocLarge(size);
        if (buffer == null)
        {
            length = 0;
            return CKR_DEVICE_MEMORY;
        }
        nuint allocated = size;
        rv = call(buffer, &size);
        length = size;
        return Written(rv, allocated, ref length);
    }

    // ---- encryption and decryption -------------------------------------------------------------------

    /// <summary>C_EncryptMessage / C_DecryptMessage ("uayayayfy" → "ay"; typed "uTayayfy" → "uUay").</summary>
    private ulong CryptMessage(Id id)
    {
        bool encrypt = id == Id.C_EncryptMessage;
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadMessageParameter(out var typed, out var raw, out bool present) ||
            !ReadInput(out var associated, out var associatedLength) || !ReadInput(out var input, out var inputLength))
            return Malformed;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        if (!Typed)
        {
            if (!AcceptRawMessageParameter(raw, present)) return CKR_MECHANISM_PARAM_INVALID;
            rv = CallWithOutput(capacity, (o, n) => encrypt
                    ? F->C_EncryptMessage(session, null, 0, associated, associatedLength, input, inputLength, o, n)
                    : F->C_DecryptMessage(session, null, 0, associated, associatedLength, input, inputLength, o, n),
                out var rawBuffer, out var rawLength);
            return ReplyOutput(rv, rawBuffer, rawLength);
        }

        var messages = _client.MessagesOf(session);
        lock (messages.Gate)
        {
            if (!AcceptTypedParameter(typed, messages.Mechanism(encrypt), out bool sendNull)) return CKR_MECHANISM_PARAM_INVALID;
            nuint size = sendNull ? 0 : MessageParameterNative.BlockSize(typed);
            byte* block = size == 0 ? null : (byte*)_arena.Alloc(size);
            nuint parameterLength = block == null ? 0 : MessageParameterNative.Build(typed, block);
            rv = CallForMessageOutput(capacity, inputLength, (o, n) => encrypt
                    ? F->C_EncryptMessage(session, block, parameterLength, associated, associatedLength, input, inputLength, o, n)
                    : F->C_DecryptMessage(session, block, parameterLength, associated, associatedLength, input, inputLength, o, n),
                out var buffer, out var length);
            var update = block == null ? MessageParameterUpdate.None : MessageParameterNative.Changes(typed, block);
            return TypedReply(rv, update, hasOutput: true, buffer, length);
        }
    }

    /// <summary>C_EncryptMessageBegin / C_DecryptMessageBegin ("uayay"; typed "uTay" → "uU").</summary>
    private ulong CryptMessageBegin(Id id)
    {
        bool encrypt = id == Id.C_EncryptMessageBegin;
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadMessageParameter(out var typed, out var raw, out bool present) ||
            !ReadInput(out var associated, out var associatedLength) || !Done)
            return Malformed;
        if (!Typed)
        {
            if (!AcceptRawMessageParameter(raw, present)) return CKR_MECHANISM_PARAM_INVALID;
            rv = encrypt
                ? F->C_EncryptMessageBegin(session, null, 0, associated, associatedLength)
                : F->C_DecryptMessageBegin(session, null, 0, associated, associatedLength);
            if (rv == CKR_OK) BeginReply();
            return rv;
        }

        var messages = _client.MessagesOf(session);
        lock (messages.Gate)
        {
            if (!AcceptTypedParameter(typed, messages.Mechanism(encrypt), out bool sendNull)) return CKR_MECHANISM_PARAM_INVALID;
            // The module may keep this parameter's pointers until the message ends: the block lives that long.
            nuint size = sendNull ? 0 : MessageParameterNative.BlockSize(typed);
            byte* block = size == 0 ? null : MessageParameterNative.AllocateLasting(size);
            nuint parameterLength = block == null ? 0 : MessageParameterNative.Build(typed, block);
            rv = encrypt
                ? F->C_EncryptMessageBegin(session, block, parameterLength, associated, associatedLength)
                : F->C_DecryptMessageBegin(session, block, parameterLength, associated, associatedLength);
            var update = block == null ? MessageParameterUpdate.None : MessageParameterNative.Changes(typed, block);
            if (rv == CKR_OK) messages.KeepBegun(encrypt, block);
            else if (block != null) MessageParameterNative.Free(block);
            return TypedReply(rv, update, hasOutput: false, null, 0);
        }
    }

    /// <summary>C_EncryptMessageNext / C_DecryptMessageNext ("uayayfyu" → "ay"; typed "uTayfyu" → "uUay").</summary>
    private ulong CryptMessageNext(Id id)
    {
        bool encrypt = id == Id.C_EncryptMessageNext;
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadMessageParameter(out var typed, out var raw, out bool present) || !ReadInput(out var input, out var inputLength))
            return Malformed;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!ReadULong(out var flags) || !Done) return Malformed;
        if (!Typed)
        {
            if (!AcceptRawMessageParameter(raw, present)) return CKR_MECHANISM_PARAM_INVALID;
            rv = CallWithOutput(capacity, (o, n) => encrypt
                    ? F->C_EncryptMessageNext(session, null, 0, input, inputLength, o, n, flags)
                    : F->C_DecryptMessageNext(session, null, 0, input, inputLength, o, n, flags),
                out var rawBuffer, out var rawLength);
            return ReplyOutput(rv, rawBuffer, rawLength);
        }

        var messages = _client.MessagesOf(session);
        lock (messages.Gate)
        {
            if (!AcceptTypedParameter(typed, messages.Mechanism(encrypt), out bool sendNull)) return CKR_MECHANISM_PARAM_INVALID;
            nuint size = sendNull ? 0 : MessageParameterNative.BlockSize(typed);
            byte* block = size == 0 ? null : (byte*)_arena.Alloc(size);
            nuint parameterLength = block == null ? 0 : MessageParameterNative.Build(typed, block);
            rv = CallForMessageOutput(capacity, inputLength, (o, n) => encrypt
                    ? F->C_EncryptMessageNext(session, block, parameterLength, input, inputLength, o, n, flags)
                    : F->C_DecryptMessageNext(session, block, parameterLength, input, inputLength, o, n, flags),
                out var buffer, out var length);
            var update = block == null ? MessageParameterUpdate.None : MessageParameterNative.Changes(typed, block);
            // The last part ends the message (a too-small buffer lets the caller repeat it).
            if ((flags & (nuint)CKF_END_OF_MESSAGE) != 0 && rv != CKR_BUFFER_TOO_SMALL) messages.EndMessage(encrypt);
            return TypedReply(rv, update, hasOutput: true, buffer, length);
        }
    }

    // ---- signing and verifying: no mechanism defines a typed parameter for them, so only NULL travels ----

    /// <summary>C_SignMessage ("uayayfy" → "ay").</summary>
    private ulong SignMessage()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!_request.TryReadByteArray(out bool present, out var parameter, out _) || !ReadInput(out var data, out var dataLength))
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
        if (!_request.TryReadByteArray(out bool present, out var parameter, out _) || !Done) return Malformed;
        if (!AcceptRawMessageParameter(parameter, present)) return CKR_MECHANISM_PARAM_INVALID;
        rv = id == Id.C_SignMessageBegin ? F->C_SignMessageBegin(session, null, 0) : F->C_VerifyMessageBegin(session, null, 0);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    /// <summary>C_SignMessageNext ("uayayyfy" → "ay"): a zero byte means the caller wants no signature yet.</summary>
    private ulong SignMessageNext()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!_request.TryReadByteArray(out bool present, out var parameter, out _) || !ReadInput(out var data, out var dataLength) ||
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
        if (!_request.TryReadByteArray(out bool present, out var parameter, out _) || !ReadInput(out var data, out var dataLength) ||
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
