using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;
using Id = P11Proxy.Wire.RpcCallId;

namespace P11Proxy.Broker;

internal sealed unsafe partial class Dispatcher
{
    private ulong Dispatch(RpcCall call)
    {
        ulong rv = DispatchCall(call);
        if (_arena.RefusedOutput != 0)
            _log.Warn($"{_client.Peer}: {call.Name}: refused a {_arena.RefusedOutput}-byte output, over the " +
                      $"{OutputBudget.Bytes >> 20} MiB all large outputs may use at once (--output-memory-mib); CKR_DEVICE_MEMORY");
        return rv;
    }

    private ulong DispatchCall(RpcCall call)
    {
        var id = call.Id;
        if (id != Id.C_Initialize && !_client.Initialized)
            return CKR_CRYPTOKI_NOT_INITIALIZED;
        if (!_backend.Has30 && call.Needs30Backend)
            return CKR_FUNCTION_NOT_SUPPORTED;
        switch (id)
        {
            case Id.C_Initialize: return Initialize();
            case Id.C_Finalize: return Finalize();
            case Id.C_GetInfo: return GetInfo();
            case Id.C_GetSlotList: return GetSlotList();
            case Id.C_GetSlotInfo: return GetSlotInfo();
            case Id.C_GetTokenInfo: return GetTokenInfo();
            case Id.C_GetMechanismList: return GetMechanismList();
            case Id.C_GetMechanismInfo: return GetMechanismInfo();
            case Id.C_InitToken: return InitToken(padded: false);
            case Id.C_InitToken2: return InitToken(padded: true);
            case Id.C_OpenSession: return OpenSession();
            case Id.C_CloseSession: return CloseSession();
            case Id.C_CloseAllSessions: return CloseAllSessions();
            case Id.C_GetSessionInfo: return GetSessionInfo();
            case Id.C_InitPIN: return Data((s, d, n) => F->C_InitPIN(s, d, n));
            case Id.C_SetPIN: return DataData((s, a, an, b, bn) => F->C_SetPIN(s, a, an, b, bn));
            case Id.C_GetOperationState: return ToData((s, o, n) => F->C_GetOperationState(s, o, n));
            case Id.C_SetOperationState: return SetOperationState();
            case Id.C_Login: return Login();
            case Id.C_Logout: return Session(s => F->C_Logout(s));
            case Id.C_LoginUser: return LoginUser();
            case Id.C_SessionCancel: return SessionCancel();
            case Id.C_CreateObject: return CreateObject(copy: false);
            case Id.C_CopyObject: return CreateObject(copy: true);
            case Id.C_DestroyObject: return SessionHandle((s, h) => F->C_DestroyObject(s, h));
            case Id.C_GetObjectSize: return GetObjectSize();
            case Id.C_GetAttributeValue: return GetAttributeValue();
            case Id.C_SetAttributeValue: return SetAttributeValue();
            case Id.C_FindObjectsInit: return FindObjectsInit();
            case Id.C_FindObjects: return FindObjects();
            case Id.C_FindObjectsFinal: return Session(s => F->C_FindObjectsFinal(s));
            case Id.C_EncryptInit: return Init((s, m, k) => F->C_EncryptInit(s, m, k));
            case Id.C_Encrypt: return DataToData((s, i, n, o, on) => F->C_Encrypt(s, i, n, o, on));
            case Id.C_EncryptUpdate: return DataToData((s, i, n, o, on) => F->C_EncryptUpdate(s, i, n, o, on));
            case Id.C_EncryptFinal: return ToData((s, o, n) => F->C_EncryptFinal(s, o, n));
            case Id.C_DecryptInit: return Init((s, m, k) => F->C_DecryptInit(s, m, k));
            case Id.C_Decrypt: return DataToData((s, i, n, o, on) => F->C_Decrypt(s, i, n, o, on));
            case Id.C_DecryptUpdate: return DataToData((s, i, n, o, on) => F->C_DecryptUpdate(s, i, n, o, on));
            case Id.C_DecryptFinal: return ToData((s, o, n) => F->C_DecryptFinal(s, o, n));
            case Id.C_DigestInit: return DigestInit();
            case Id.C_Digest: return DataToData((s, i, n, o, on) => F->C_Digest(s, i, n, o, on));
            case Id.C_DigestUpdate: return Data((s, d, n) => F->C_DigestUpdate(s, d, n));
            case Id.C_DigestKey: return SessionHandle((s, k) => F->C_DigestKey(s, k));
            case Id.C_DigestFinal: return ToData((s, o, n) => F->C_DigestFinal(s, o, n));
            case Id.C_SignInit: return Init((s, m, k) => F->C_SignInit(s, m, k));
            case Id.C_Sign: return DataToData((s, i, n, o, on) => F->C_Sign(s, i, n, o, on));
            case Id.C_SignUpdate: return Data((s, d, n) => F->C_SignUpdate(s, d, n));
            case Id.C_SignFinal: return ToData((s, o, n) => F->C_SignFinal(s, o, n));
            case Id.C_SignRecoverInit: return Init((s, m, k) => F->C_SignRecoverInit(s, m, k));
            case Id.C_SignRecover: return DataToData((s, i, n, o, on) => F->C_SignRecover(s, i, n, o, on));
            case Id.C_VerifyInit: return Init((s, m, k) => F->C_VerifyInit(s, m, k));
            case Id.C_Verify: return DataData((s, a, an, b, bn) => F->C_Verify(s, a, an, b, bn));
            case Id.C_VerifyUpdate: return Data((s, d, n) => F->C_VerifyUpdate(s, d, n));
            case Id.C_VerifyFinal: return Data((s, d, n) => F->C_VerifyFinal(s, d, n));
            case Id.C_VerifyRecoverInit: return Init((s, m, k) => F->C_VerifyRecoverInit(s, m, k));
            case Id.C_VerifyRecover: return DataToData((s, i, n, o, on) => F->C_VerifyRecover(s, i, n, o, on));
            case Id.C_DigestEncryptUpdate: return DataToData((s, i, n, o, on) => F->C_DigestEncryptUpdate(s, i, n, o, on));
            case Id.C_DecryptDigestUpdate: return DataToData((s, i, n, o, on) => F->C_DecryptDigestUpdate(s, i, n, o, on));
            case Id.C_SignEncryptUpdate: return DataToData((s, i, n, o, on) => F->C_SignEncryptUpdate(s, i, n, o, on));
            case Id.C_DecryptVerifyUpdate: return DataToData((s, i, n, o, on) => F->C_DecryptVerifyUpdate(s, i, n, o, on));
            case Id.C_GenerateKey: return GenerateKey();
            case Id.C_GenerateKeyPair: return GenerateKeyPair();
            case Id.C_WrapKey: return WrapKey();
            case Id.C_UnwrapKey: return UnwrapKey();
            case Id.C_DeriveKey: return DeriveKey(version2: false);
            case Id.C_DeriveKey2: return DeriveKey(version2: true);
            case Id.C_SeedRandom: return Data((s, d, n) => F->C_SeedRandom(s, d, n));
            case Id.C_GenerateRandom: return GenerateRandom();
            case Id.C_WaitForSlotEvent: return WaitForSlotEvent();
            case Id.C_MessageEncryptInit: return MessageCryptInit(encrypt: true);
            case Id.C_MessageDecryptInit: return MessageCryptInit(encrypt: false);
            case Id.C_MessageSignInit: return Init((s, m, k) => F->C_MessageSignInit(s, m, k));
            case Id.C_MessageVerifyInit: return Init((s, m, k) => F->C_MessageVerifyInit(s, m, k));
            case Id.C_MessageEncryptFinal: return MessageCryptFinal(encrypt: true);
            case Id.C_MessageDecryptFinal: return MessageCryptFinal(encrypt: false);
            case Id.C_MessageSignFinal: return Session(s => F->C_MessageSignFinal(s));
            case Id.C_MessageVerifyFinal: return Session(s => F->C_MessageVerifyFinal(s));
            case Id.C_EncryptMessage: return CryptMessage(id);
            case Id.C_DecryptMessage: return CryptMessage(id);
            case Id.C_EncryptMessageBegin: return CryptMessageBegin(id);
            case Id.C_DecryptMessageBegin: return CryptMessageBegin(id);
            case Id.C_EncryptMessageNext: return CryptMessageNext(id);
            case Id.C_DecryptMessageNext: return CryptMessageNext(id);
            case Id.C_SignMessage: return SignMessage();
            case Id.C_SignMessageBegin: return SignOrVerifyMessageBegin(id);
            case Id.C_VerifyMessageBegin: return SignOrVerifyMessageBegin(id);
            case Id.C_SignMessageNext: return SignMessageNext();
            case Id.C_VerifyMessage: return VerifyMessage(id);
            case Id.C_VerifyMessageNext: return VerifyMessage(id);
            default: return Malformed;
        }
    }

    // ---- shapes --------------------------------------------------------------------------------------

    private delegate nuint SessionCall(nuint session);
    private delegate nuint SessionHandleCall(nuint session, nuint handle);
    private delegate nuint DataCall(nuint session, byte* data, nuint length);
    private delegate nuint DataDataCall(nuint session, byte* first, nuint firstLength, byte* second, nuint secondLength);
    private delegate nuint ToDataCall(nuint session, byte* output, nuint* outputLength);
    private delegate nuint DataToDataCall(nuint session, byte* input, nuint inputLength, byte* output, nuint* outputLength);
    private delegate nuint InitCall(nuint session, CK_MECHANISM* mechanism, nuint key);

    private ulong Session(SessionCall call)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!Done) return Malformed;
        rv = call(session);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong SessionHandle(SessionHandleCall call)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadULong(out var handle) || !Done) return Malformed;
        rv = call(session, handle);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong Data(DataCall call)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadInput(out var data, out var length) || !Done) return Malformed;
        rv = call(session, data, length);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong DataData(DataDataCall call)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadInput(out var first, out var firstLength) || !ReadInput(out var second, out var secondLength) || !Done)
            return Malformed;
        rv = call(session, first, firstLength, second, secondLength);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong ToData(ToDataCall call)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        rv = CallWithOutput(capacity, (o, n) => call(session, o, n), out var buffer, out var length, session);
        return ReplyOutput(rv, buffer, length);
    }

    private ulong DataToData(DataToDataCall call)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadInput(out var input, out var inputLength)) return Malformed;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        rv = CallWithOutput(capacity, (o, n) => call(session, input, inputLength, o, n), out var buffer, out var length, session);
        return ReplyOutput(rv, buffer, length);
    }

    private ulong Init(InitCall call)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadMechanism(out var mechanism);
        if (rv != CKR_OK) return rv;
        if (!ReadULong(out var key) || !Done) return Malformed;
        rv = call(session, mechanism, key);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong DigestInit()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadMechanism(out var mechanism);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        rv = F->C_DigestInit(session, mechanism);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    // ---- general ---------------------------------------------------------------------------------------

    private ulong Initialize()
    {
        if (!_request.TryReadByteArray(out bool present, out var handshake, out _) || !present ||
            !handshake.Data.Span.SequenceEqual(CallTable.Handshake) ||
            !_request.TryReadByte(out byte hasReserved) ||
            !_request.TryReadByteArray(out bool reservedPresent, out var reserved, out _) || !Done)
            return Malformed;
        // pReserved, when given, is a string (p11-kit's client reads it as one): anything else is
        // garbage, refused as a module loaded directly refuses it.
        if (hasReserved != 0 && !(reservedPresent && ReservedString.IsText(reserved.Data.Span)))
            return CKR_ARGUMENTS_BAD;
        // The backend was initialised once at start-up; each client only starts its own view.
        _client.Initialized = true;
        // A client that may be ours (no frame options) is told what p11proxy offers beyond
        // p11-kit's protocol; p11-kit's client (options: its module name) sees today's reply.
        bool typed = _clientMayBeOurs;
        _client.Profile = _client.Profile.WithTypedMessageParameters(typed);
        if (typed) _replyOptions = AnnouncementBytes;
        if (_log.Verbose) Note(typed ? " (typed message parameters announced)" : "");
        if (_client.Events is null) _client.SetEvents(_events.Subscribe(_client.Peer));
        TokenWait.Current?.RememberSlots(F);
        BeginReply();
        return CKR_OK;
    }

    private ulong Finalize()
    {
        if (!Done) return Malformed;
        // A thread of this client waiting for a slot event returns now, as C_Finalize makes it
        // return in a module loaded directly (its reply goes out before this one).
        if (_client.TakeEvents() is { } events) _events.Unsubscribe(events, CKR_CRYPTOKI_NOT_INITIALIZED);
        HeldPins.Current?.CancelAsks(); // a login waiting for an ask-pass program ends, as C_Finalize ends waits
        CloseClientSessions();
        _client.Initialized = false;
        BeginReply();
        return CKR_OK;
    }

    private ulong GetInfo()
    {
        if (!Done) return Malformed;
        CK_INFO info = default;
        ulong rv = F->C_GetInfo(&info);
        if (rv != CKR_OK) return rv;
        // The broker names itself, as p11-kit's server does (see Identity): with the backend's own
        // CK_INFO a host that also loads the backend would take the two for one module.
        Span<byte> manufacturer = stackalloc byte[32];
        Span<byte> description = stackalloc byte[32];
        Pkcs11Abi.WritePadded(manufacturer, Identity.Manufacturer);
        Pkcs11Abi.WritePadded(description, Identity.BrokerDescription);
        BeginReply();
        _reply.WriteVersion(info.cryptokiVersion.major, info.cryptokiVersion.minor);
        _reply.WriteSpaceString(manufacturer);
        _reply.WriteULong(info.flags);
        _reply.WriteSpaceString(description);
        _reply.WriteVersion(Identity.VersionMajor, Identity.VersionMinor);
        return CKR_OK;
    }

    private ulong GetSlotList()
    {
        if (!_request.TryReadByte(out byte tokenPresent) || !_request.TryReadULongBuffer(out uint capacity) || !Done)
            return Malformed;
        var slots = _filter.VisibleSlots(F, tokenPresent, out ulong rv);
        if (rv != CKR_OK) return rv;
        BeginReply();
        bool fits = capacity != 0 && (uint)slots.Length <= capacity;
        ulong[] values = slots.Select(s => (ulong)s).ToArray();
        if (fits) _reply.WriteULongArray(values);
        else _reply.WriteULongArrayLengthOnly((uint)values.Length);
        return CKR_OK;
    }

    private bool ReadVisibleSlot(out nuint slot, out ulong rv)
    {
        rv = CKR_OK;
        if (!ReadULong(out slot)) { rv = Malformed; return false; }
        if (_log.Verbose) Note($" slot={slot}");
        if (!_filter.IsVisible(F, slot)) { rv = CKR_SLOT_ID_INVALID; return false; }
        return true;
    }

    private ulong GetSlotInfo()
    {
        if (!ReadVisibleSlot(out var slot, out ulong rv)) return rv;
        if (!Done) return Malformed;
        CK_SLOT_INFO info = default;
        rv = F->C_GetSlotInfo(slot, &info);
        if (rv != CKR_OK) return rv;
        BeginReply();
        WriteSpace(info.slotDescription);
        WriteSpace(info.manufacturerID);
        _reply.WriteULong(info.flags);
        _reply.WriteVersion(info.hardwareVersion.major, info.hardwareVersion.minor);
        _reply.WriteVersion(info.firmwareVersion.major, info.firmwareVersion.minor);
        return CKR_OK;
    }

    private ulong GetTokenInfo()
    {
        if (!ReadULong(out var slot)) return Malformed;
        if (_log.Verbose) Note($" slot={slot}");
        if (!Done) return Malformed;
        CK_TOKEN_INFO info = default;
        ulong rv = F->C_GetTokenInfo(slot, &info);
        // The filter judges from the information just fetched: one backend call, not two.
        if (!_filter.IsVisible(F, slot, rv == CKR_OK ? &info : null)) return CKR_SLOT_ID_INVALID;
        if (rv != CKR_OK) return rv;
        HeldPins.Current?.AdjustTokenInfo(F, slot, &info);
        BeginReply();
        WriteSpace(info.label);
        WriteSpace(info.manufacturerID);
        WriteSpace(info.model);
        WriteSpace(info.serialNumber);
        _reply.WriteULong(info.flags);
        _reply.WriteULong(info.ulMaxSessionCount);
        _reply.WriteULong(info.ulSessionCount);
        _reply.WriteULong(info.ulMaxRwSessionCount);
        _reply.WriteULong(info.ulRwSessionCount);
        _reply.WriteULong(info.ulMaxPinLen);
        _reply.WriteULong(info.ulMinPinLen);
        _reply.WriteULong(info.ulTotalPublicMemory);
        _reply.WriteULong(info.ulFreePublicMemory);
        _reply.WriteULong(info.ulTotalPrivateMemory);
        _reply.WriteULong(info.ulFreePrivateMemory);
        _reply.WriteVersion(info.hardwareVersion.major, info.hardwareVersion.minor);
        _reply.WriteVersion(info.firmwareVersion.major, info.firmwareVersion.minor);
        WriteSpace(info.utcTime);
        return CKR_OK;
    }

    private ulong GetMechanismList()
    {
        if (!ReadVisibleSlot(out var slot, out ulong rv)) return rv;
        if (!_request.TryReadULongBuffer(out uint capacity) || !Done) return Malformed;
        if (capacity > MaxOutputBuffer / 8) return CKR_DEVICE_MEMORY;
        // Sized by what the token has, not by the capacity the client claims.
        nuint count = 0;
        nuint* list = null;
        if (capacity != 0)
        {
            rv = F->C_GetMechanismList(slot, null, &count);
            if (rv != CKR_OK) return rv;
            if (count > capacity)
            {
                BeginReply();
                WriteULongs(CKR_BUFFER_TOO_SMALL, null, count, arrayWanted: false);
                return CKR_OK;
            }
            list = _arena.Alloc<nuint>((int)Math.Max(count, 1));
        }
        rv = F->C_GetMechanismList(slot, list, &count);
        if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) return rv;
        BeginReply();
        WriteULongs(rv, list, count, list != null);
        return CKR_OK;
    }

    private ulong GetMechanismInfo()
    {
        if (!ReadVisibleSlot(out var slot, out ulong rv)) return rv;
        if (!ReadULong(out var type) || !Done) return Malformed;
        CK_MECHANISM_INFO info = default;
        rv = F->C_GetMechanismInfo(slot, type, &info);
        if (rv != CKR_OK) return rv;
        // Protocol version 0 has no message-based calls: a client of it (p11-kit 0.24's, a 2.40
        // module) is not told of them, as a 3.0 module's 2.40 function list does not tell them.
        if (_request.Profile.Version == 0) info.flags &= ~(nuint)MessageMechanismFlags;
        BeginReply();
        _reply.WriteULong(info.ulMinKeySize);
        _reply.WriteULong(info.ulMaxKeySize);
        _reply.WriteULong(info.flags);
        return CKR_OK;
    }

    /// <summary>CKF_MESSAGE_ENCRYPT, _DECRYPT, _SIGN, _VERIFY and CKF_MULTI_MESSAGE.</summary>
    private const ulong MessageMechanismFlags = CKF_MESSAGE_ENCRYPT | CKF_MESSAGE_DECRYPT | CKF_MESSAGE_SIGN | CKF_MESSAGE_VERIFY | CKF_MULTI_MESSAGE;

    private ulong InitToken(bool padded)
    {
        if (!ReadVisibleSlot(out var slot, out ulong rv)) return rv;
        if (!ReadInput(out var pin, out var pinLength)) return Malformed;
        ReadOnlyMemory<byte> label;
        bool ok = padded ? _request.TryReadSpaceString(out label) : _request.TryReadZeroString(out label);
        if (!ok || !Done) return Malformed;
        // The C label is exactly 32 bytes, space padded; a shorter string is padded here.
        var field = (byte*)_arena.Alloc(32);
        var span = new Span<byte>(field, 32);
        span.Fill((byte)' ');
        label.Span[..Math.Min(32, label.Length)].CopyTo(span);
        rv = F->C_InitToken(slot, pin, pinLength, field);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong OpenSession()
    {
        if (!ReadVisibleSlot(out var slot, out ulong rv)) return rv;
        if (!ReadULong(out var flags) || !Done) return Malformed;
        nuint session = 0;
        rv = MayBlock && TokenWait.Current is { } wait // --wait-for-token: a token that left may come back
            ? wait.OpenSession(_backend, _filter, _client.Events, _log, ref slot, flags, &session)
            : F->C_OpenSession(slot, flags, null, null, &session);
        if (rv != CKR_OK) return rv;
        TokenWait.Current?.Remember(F, slot, session);
        _client.AddSession(session, slot);
        BeginReply();
        _reply.WriteULong(session);
        return CKR_OK;
    }

    private ulong CloseSession()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!Done) return Malformed;
        rv = F->C_CloseSession(session);
        if (rv == CKR_OK || rv == CKR_SESSION_HANDLE_INVALID || rv == CKR_SESSION_CLOSED)
        {
            _client.RemoveSession(session);
            TokenWait.Current?.Forget(session);
        }
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong CloseAllSessions()
    {
        if (!ReadVisibleSlot(out var slot, out ulong rv)) return rv;
        if (!Done) return Malformed;
        // The backend judges the slot id, as its own C_CloseAllSessions would.
        CK_SLOT_INFO info = default;
        rv = F->C_GetSlotInfo(slot, &info);
        if (rv != CKR_OK) return rv;
        // Only this client's sessions: the backend's C_CloseAllSessions would close everyone's.
        foreach (var session in _client.SessionsOn(slot))
        {
            F->C_CloseSession(session);
            _client.RemoveSession(session);
        }
        BeginReply();
        return CKR_OK;
    }

    private ulong GetSessionInfo()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!Done) return Malformed;
        CK_SESSION_INFO info = default;
        rv = F->C_GetSessionInfo(session, &info);
        if (rv != CKR_OK) return rv;
        BeginReply();
        _reply.WriteULong(info.slotID);
        _reply.WriteULong(info.state);
        _reply.WriteULong(info.flags);
        _reply.WriteULong(info.ulDeviceError);
        return CKR_OK;
    }

    private ulong SetOperationState()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadInput(out var state, out var length) || !ReadULong(out var encryptionKey) ||
            !ReadULong(out var authenticationKey) || !Done)
            return Malformed;
        rv = F->C_SetOperationState(session, state, length, encryptionKey, authenticationKey);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong Login()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadULong(out var userType) || !ReadInput(out var pin, out var pinLength) || !Done) return Malformed;
        rv = HeldPins.Login(_backend, session, userType, pin, pinLength); // a NULL PIN may mean the held one
        if (rv != CKR_OK && MayBlock && TokenWait.Current is { } wait) // --wait-for-token: the token may come back
            rv = wait.LoginWhenBack(F, _filter, _client.Events, _log, session, rv, () => HeldPins.Login(_backend, session, userType, pin, pinLength));
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong LoginUser()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadULong(out var userType) || !ReadInput(out var pin, out var pinLength) ||
            !ReadInput(out var name, out var nameLength) || !Done)
            return Malformed;
        rv = F->C_LoginUser(session, userType, pin, pinLength, name, nameLength);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong SessionCancel()
    {
        if (!ReadULong(out var session) || !ReadULong(out var flags) || !Done) return Malformed;
        if (_log.Verbose) Note($" session={session}");
        // A handle this client does not own goes to the module as CK_INVALID_HANDLE, which names
        // no session: the client gets the module's own answer for an unknown session (NSS softoken
        // says CKR_OPERATION_CANCEL_FAILED, not CKR_SESSION_HANDLE_INVALID) and no other client's
        // session is touched.
        if (!_client.Owns(session)) session = (nuint)CK_INVALID_HANDLE;
        ulong rv = F->C_SessionCancel(session, flags);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    /// <summary>
    /// The length of C_GenerateRandom is an input: the capacity is what the client asked for. From
    /// version 1 on, capacity 0 is a NULL buffer (a zero-length one travels as 0xffffffff): the
    /// backend is given NULL and judges it. Version 0 sends a zero-length buffer as 0 too, and
    /// cannot tell it from NULL: there it is taken for the zero-length buffer, the call a caller
    /// makes on purpose (pkcs11-tool --test does), so C_GenerateRandom(NULL, n) through p11-kit
    /// 0.24's client succeeds with no bytes instead of CKR_ARGUMENTS_BAD.
    /// </summary>
    private ulong GenerateRandom()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        if (capacity == 0 && _request.Profile.Version >= 1)
        {
            rv = F->C_GenerateRandom(session, null, 0);
            return ReplyOutput(rv, null, 0);
        }
        // The length is what the client asked for, not a guess: it is allocated as asked.
        nuint length = capacity == RpcMessageWriter.ZeroLengthBuffer ? 0 : capacity;
        var buffer = (byte*)_arena.TryAllocLarge(length);
        if (buffer == null) return CKR_DEVICE_MEMORY;
        rv = F->C_GenerateRandom(session, buffer, length);
        return ReplyOutput(rv, buffer, length);
    }

    private ulong WaitForSlotEvent()
    {
        if (!ReadULong(out var flags) || !Done) return Malformed;
        // Every client is given every event (SlotEvents): one client's wait never takes another's.
        if (_client.Events is not { } events) return CKR_CRYPTOKI_NOT_INITIALIZED;
        ulong rv = _events.Wait(events, flags, MayBlock, out var slot);
        if (rv != CKR_OK) return rv;
        BeginReply();
        _reply.WriteULong(slot);
        return CKR_OK;
    }

    // ---- objects ------------------------------------------------------------------------------------------

    private ulong CreateObject(bool copy)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        nuint source = 0;
        if (copy && !ReadULong(out source)) return Malformed;
        rv = ReadTemplate(out var template, out var count);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        nuint handle = 0;
        rv = copy ? F->C_CopyObject(session, source, template, count, &handle) : F->C_CreateObject(session, template, count, &handle);
        if (rv != CKR_OK) return rv;
        BeginReply();
        _reply.WriteULong(handle);
        return CKR_OK;
    }

    private ulong GetObjectSize()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadULong(out var handle) || !Done) return Malformed;
        nuint size = 0;
        rv = F->C_GetObjectSize(session, handle, &size);
        if (rv != CKR_OK) return rv;
        BeginReply();
        _reply.WriteULong(size);
        return CKR_OK;
    }

    private ulong GetAttributeValue()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadULong(out var handle)) return Malformed;
        if (!_request.TryReadAttributeBuffer(MaxOutputBuffer, out var buffers) || !Done) return Malformed;
        // A size query first tells what the values need: no more than that (nor more than claimed)
        // is allocated on the client's word, and a value that does not fit the client's buffer gets
        // none. A module is never handed a buffer smaller than its value: NSS softoken (3.87) writes
        // such a value whole past the buffer's end and answers CKR_OK.
        long claimed = 0;
        foreach (var buffer in buffers) claimed += buffer.Length;
        nuint[]? needed = null;
        if (claimed > 0)
        {
            var query = BufferTemplate(buffers, null, sizesOnly: true);
            F->C_GetAttributeValue(session, handle, query, (nuint)buffers.Length);
            needed = new nuint[buffers.Length];
            for (int i = 0; i < buffers.Length; i++) needed[i] = query[i].ulValueLen;
        }
        // One template can name the same large value many times: the budget is for all of them.
        if (!_arena.TryReserveLarge(ValueBytes(buffers, needed)))
            return CKR_DEVICE_MEMORY;
        // An empty template is an empty array, not NULL (see ReadTemplate).
        var template = buffers.Length == 0 ? _arena.Alloc<CK_ATTRIBUTE>(1) : BufferTemplate(buffers, needed, sizesOnly: false);
        Span<nuint> given = buffers.Length <= 64 ? stackalloc nuint[buffers.Length] : new nuint[buffers.Length];
        for (int i = 0; i < buffers.Length; i++) given[i] = template[i].ulValueLen;
        rv = F->C_GetAttributeValue(session, handle, template, (nuint)buffers.Length);
        rv = FitValues(buffers, needed, template, given, rv);
        // These codes still carry per-attribute results, so they travel inside a normal reply.
        if (rv != CKR_OK && rv != CKR_ATTRIBUTE_SENSITIVE && rv != CKR_ATTRIBUTE_TYPE_INVALID && rv != CKR_BUFFER_TOO_SMALL)
            return rv;
        BeginReply();
        _reply.BeginAttributeArray((uint)buffers.Length);
        ulong encoded = NativeTemplates.WriteAttributes(_reply.Writer, _reply.Profile, template, (nuint)buffers.Length);
        if (encoded != CKR_OK) return encoded;
        _reply.WriteULong(rv);
        return CKR_OK;
    }

    /// <summary>
    /// After the call: a value that did not fit the client's buffer (it got none) is
    /// CK_UNAVAILABLE_INFORMATION and the call CKR_BUFFER_TOO_SMALL, as a module answers for a buffer
    /// too small; a length larger than the buffer the module was given (a module out of step, or
    /// a value that grew since the size query) is treated the same, and never read.
    /// </summary>
    private static ulong FitValues(WireAttributeBuffer[] buffers, nuint[]? needed, CK_ATTRIBUTE* template, ReadOnlySpan<nuint> given, ulong rv)
    {
        bool tooSmall = false;
        for (int i = 0; i < buffers.Length; i++)
        {
            if (buffers[i].Length == 0 || buffers[i].Nested is not null) continue;
            bool noBuffer = DoesNotFit(buffers[i], needed?[i]);
            if (noBuffer || (template[i].ulValueLen != NativeTemplates.Unavailable && template[i].ulValueLen > given[i]))
            {
                template[i].ulValueLen = NativeTemplates.Unavailable;
                tooSmall = true;
            }
        }
        return tooSmall && rv == CKR_OK ? CKR_BUFFER_TOO_SMALL : rv;
    }

    /// <summary>Whether the size query showed a value larger than the client's buffer for it.</summary>
    private static bool DoesNotFit(WireAttributeBuffer buffer, nuint? needed) =>
        needed is { } known && known != NativeTemplates.Unavailable && known > buffer.Length;

    /// <summary>
    /// The backend's template for a C_GetAttributeValue request. <paramref name="sizesOnly"/> leaves
    /// flat values NULL (a size query); <paramref name="needed"/>, when known, caps each allocation.
    /// </summary>
    private CK_ATTRIBUTE* BufferTemplate(WireAttributeBuffer[] buffers, nuint[]? needed, bool sizesOnly)
    {
        if (buffers.Length == 0) return null;
        var template = _arena.Alloc<CK_ATTRIBUTE>(buffers.Length);
        for (int i = 0; i < buffers.Length; i++)
        {
            template[i].type = (nuint)buffers[i].Type;
            if (buffers[i].Length == 0)
                continue;
            if (buffers[i].Nested is { } nested)
            {
                template[i].pValue = BufferTemplate(nested, null, sizesOnly);
                template[i].ulValueLen = (nuint)(nested.Length * sizeof(CK_ATTRIBUTE));
                continue;
            }
            if (sizesOnly || DoesNotFit(buffers[i], needed?[i]))
                continue; // no buffer: the module reports only the length (made unavailable afterwards)
            nuint size = ValueSize(buffers[i], needed?[i]);
            // A client buffer stays a buffer (non-NULL) even when nothing needs to go into it.
            template[i].pValue = _arena.Alloc(Math.Max(size, 1));
            template[i].ulValueLen = needed is not null && needed[i] == NativeTemplates.Unavailable ? 0 : size;
        }
        return template;
    }

    /// <summary>The value size allocated for one flat entry: what the client claims, capped by what the backend needs when known.</summary>
    private static nuint ValueSize(WireAttributeBuffer buffer, nuint? needed) =>
        needed is { } known && known != NativeTemplates.Unavailable && known < buffer.Length ? known : buffer.Length;

    /// <summary>All the value bytes <see cref="BufferTemplate"/> allocates for <paramref name="buffers"/>, nested ones included.</summary>
    private static nuint ValueBytes(WireAttributeBuffer[] buffers, nuint[]? needed)
    {
        nuint total = 0;
        for (int i = 0; i < buffers.Length; i++)
        {
            if (buffers[i].Length == 0)
                continue;
            total += buffers[i].Nested is { } nested ? ValueBytes(nested, null)
                : DoesNotFit(buffers[i], needed?[i]) ? 0 : Math.Max(ValueSize(buffers[i], needed?[i]), 1);
        }
        return total;
    }

    private ulong SetAttributeValue()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!ReadULong(out var handle)) return Malformed;
        rv = ReadTemplate(out var template, out var count);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        rv = F->C_SetAttributeValue(session, handle, template, count);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong FindObjectsInit()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadTemplate(out var template, out var count);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        rv = F->C_FindObjectsInit(session, template, count);
        if (rv == CKR_OK) BeginReply();
        return rv;
    }

    private ulong FindObjects()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        if (!_request.TryReadULongBuffer(out uint capacity) || !Done) return Malformed;
        if (capacity > MaxOutputBuffer / 8) return CKR_DEVICE_MEMORY;
        // C_FindObjects may return fewer handles than asked (callers loop until 0), so a huge
        // capacity is served in bounded batches rather than allocated. Capacity 0 is a NULL array
        // (the wire has no other form for it): the backend judges it, as with p11-kit's server.
        uint batch = Math.Min(capacity, 4096u);
        nuint found = 0;
        nuint* handles = capacity == 0 ? null : _arena.Alloc<nuint>((int)batch);
        rv = F->C_FindObjects(session, handles, batch, &found);
        if (rv != CKR_OK) return rv;
        if (found > batch) return CKR_GENERAL_ERROR;
        BeginReply();
        WriteULongs(rv, handles, found, arrayWanted: true);
        return CKR_OK;
    }

    // ---- keys ---------------------------------------------------------------------------------------------

    private ulong GenerateKey()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadMechanism(out var mechanism);
        if (rv != CKR_OK) return rv;
        rv = ReadTemplate(out var template, out var count);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        nuint key = 0;
        rv = F->C_GenerateKey(session, mechanism, template, count, &key);
        if (rv != CKR_OK) return rv;
        BeginReply();
        _reply.WriteULong(key);
        return CKR_OK;
    }

    private ulong GenerateKeyPair()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadMechanism(out var mechanism);
        if (rv != CKR_OK) return rv;
        rv = ReadTemplate(out var publicTemplate, out var publicCount);
        if (rv != CKR_OK) return rv;
        rv = ReadTemplate(out var privateTemplate, out var privateCount);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        nuint publicKey = 0, privateKey = 0;
        rv = F->C_GenerateKeyPair(session, mechanism, publicTemplate, publicCount, privateTemplate, privateCount, &publicKey, &privateKey);
        if (rv != CKR_OK) return rv;
        BeginReply();
        _reply.WriteULong(publicKey);
        _reply.WriteULong(privateKey);
        return CKR_OK;
    }

    private ulong WrapKey()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadMechanism(out var mechanism);
        if (rv != CKR_OK) return rv;
        if (!ReadULong(out var wrappingKey) || !ReadULong(out var key)) return Malformed;
        rv = ReadOutputCapacity(out uint capacity);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        rv = CallWithOutput(capacity, (o, n) => F->C_WrapKey(session, mechanism, wrappingKey, key, o, n), out var buffer, out var length, session);
        return ReplyOutput(rv, buffer, length);
    }

    private ulong UnwrapKey()
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadMechanism(out var mechanism);
        if (rv != CKR_OK) return rv;
        if (!ReadULong(out var unwrappingKey) || !ReadInput(out var wrapped, out var wrappedLength)) return Malformed;
        rv = ReadTemplate(out var template, out var count);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        nuint key = 0;
        rv = F->C_UnwrapKey(session, mechanism, unwrappingKey, wrapped, wrappedLength, template, count, &key);
        if (rv != CKR_OK) return rv;
        BeginReply();
        _reply.WriteULong(key);
        return CKR_OK;
    }

    private ulong DeriveKey(bool version2)
    {
        if (!ReadSession(out var session, out ulong rv)) return rv;
        rv = ReadMechanism(out var mechanism);
        if (rv != CKR_OK) return rv;
        if (!ReadULong(out var baseKey)) return Malformed;
        rv = ReadTemplate(out var template, out var count);
        if (rv != CKR_OK) return rv;
        if (!Done) return Malformed;
        nuint key = 0;
        rv = F->C_DeriveKey(session, mechanism, baseKey, template, count, &key);
        if (!version2)
        {
            if (rv != CKR_OK) return rv;
            BeginReply();
            _reply.WriteULong(key);
            return CKR_OK;
        }
        if (rv != CKR_OK && rv != CKR_BUFFER_TOO_SMALL) return rv;
        BeginReply();
        _reply.WriteULong(rv);
        _reply.WriteMechanismUpdate(mechanism == null ? 0 : mechanism->mechanism, MechanismNative.UpdateOf(mechanism));
        _reply.WriteULong(key);
        return CKR_OK;
    }
}
