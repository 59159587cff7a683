using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

internal static unsafe partial class Remote
{
    // ---- shapes shared by many calls -------------------------------------------------------------

    // Each shape of CallShapes has its method here and its namesake in the broker's Dispatcher.

    /// <summary>Shape Session ("u" → ""): a session; nothing back.</summary>
    public static ulong Session(RpcCallId id, nuint session)
    {
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        return Finish(connection, context);
    }

    /// <summary>Shape SessionHandle ("uu" → ""): a session and a handle (or flags); nothing back.</summary>
    public static ulong SessionHandle(RpcCallId id, nuint first, nuint second)
    {
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(first, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteULong(second);
        return Finish(connection, context);
    }

    /// <summary>
    /// Starts a call whose request begins with a session and a mechanism (the *Init calls, key
    /// generation, wrapping): both written, or the CK_RV that stops the call.
    /// </summary>
    private static ulong BeginWithMechanism(RpcCallId id, nuint session, CK_MECHANISM* mechanism,
        out Connection connection, out CallContext context, out WireMechanism wire)
    {
        wire = default;
        ulong rv = Begin(id, out connection, out context);
        if (rv != CKR_OK) return rv;
        rv = MechanismMarshal.FromNative(connection.Profile, mechanism, out wire);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        // An IV of another length than p11-kit carries is the backend's to judge: our broker
        // takes it; toward p11-kit's server, which cannot, it is refused here.
        bool anyIvLength = MechanismMarshal.HasIvOfOtherLength(connection.Profile, wire) && PeerIsOurBroker(connection);
        if (anyIvLength) context = CallContext.For(connection, id); // the question used this thread's context
        context.Request.WriteULong(brokerSession);
        return context.Request.WriteMechanism(wire, anyIvLength);
    }

    /// <summary>Exchange and check that an empty reply is indeed empty.</summary>
    private static ulong Finish(Connection connection, CallContext context)
    {
        ulong rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        return context.Response.Complete ? CKR_OK : Malformed(context);
    }

    /// <summary>Shape Init ("uMu" → ""): operation set-up; C_DigestInit ("uM", its own row) has no key.</summary>
    public static ulong Init(RpcCallId id, nuint session, CK_MECHANISM* mechanism, nuint key, bool hasKey = true)
    {
        ulong rv = BeginWithMechanism(id, session, mechanism, out var connection, out var context, out var wire);
        if (rv != CKR_OK) return rv;
        if (hasKey) context.Request.WriteULong(key);
        return Finish(connection, context);
    }

    /// <summary>Shape DataToData ("uayfy" → "ay"): C_Encrypt, C_Sign, C_Digest and their kin.</summary>
    public static ulong DataToData(RpcCallId id, nuint session, byte* input, nuint inputLength, byte* output, nuint* outputLength)
    {
        if (outputLength == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        rv = CallerArguments.WriteInput(context.Request, input, inputLength);
        if (rv != CKR_OK) return rv;
        nuint capacity = *outputLength;
        CallerArguments.WriteOutputCapacity(context.Request, output, outputLength);
        rv = ExchangeForOutput(connection, context, output, outputLength, capacity);
        if (AnsweredOnlyTheSize(connection, rv, output, capacity, outputLength))
            return WithOneByte((o, n) => DataToData(id, session, input, inputLength, o, n), outputLength);
        return rv;
    }

    /// <summary>
    /// A zero-length output buffer travels to a protocol-0 peer as a size query (version 0 has no
    /// other form for it); p11-kit's server then only answers the size. When that size is 0 the call
    /// had nothing to output and would have succeeded, ending the operation (C_EncryptFinal after
    /// whole blocks): it is sent again with one byte of room to be performed. Our broker performs
    /// it at once and answers with the (empty) output, so this is not needed there.
    /// </summary>
    private static bool AnsweredOnlyTheSize(Connection connection, ulong rv, byte* output, nuint capacity, nuint* outputLength) =>
        rv == CKR_BUFFER_TOO_SMALL && output != null && capacity == 0 && *outputLength == 0 && connection.Profile.Version == 0;

    private delegate ulong OutputCall(byte* output, nuint* outputLength);

    private static ulong WithOneByte(OutputCall call, nuint* outputLength)
    {
        byte room;
        nuint length = 1;
        ulong rv = call(&room, &length);
        // A byte the caller has no room for (the size said none): what direct says of a zero-length buffer.
        if (rv == CKR_OK && length != 0) rv = CKR_BUFFER_TOO_SMALL;
        *outputLength = length;
        return rv;
    }

    /// <summary>Shape ToData ("ufy" → "ay"): the *Final calls, C_GetOperationState (and C_GenerateRandom's own method).</summary>
    public static ulong ToData(RpcCallId id, nuint session, byte* output, nuint* outputLength)
    {
        if (outputLength == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        nuint capacity = *outputLength;
        CallerArguments.WriteOutputCapacity(context.Request, output, outputLength);
        rv = ExchangeForOutput(connection, context, output, outputLength, capacity);
        if (AnsweredOnlyTheSize(connection, rv, output, capacity, outputLength))
            return WithOneByte((o, n) => ToData(id, session, o, n), outputLength);
        return rv;
    }

    private static ulong ExchangeForOutput(Connection connection, CallContext context, byte* output, nuint* outputLength, nuint capacity)
    {
        ulong rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        rv = CallerArguments.ReadOutput(context.Response, output, outputLength, capacity);
        if (rv == CKR_DEVICE_ERROR || !context.Response.Complete) return Malformed(context);
        return rv;
    }

    /// <summary>Shape Data ("uay" → ""): the *Update calls, C_VerifyFinal, C_SeedRandom, C_InitPIN.</summary>
    public static ulong Data(RpcCallId id, nuint session, byte* data, nuint length)
    {
        bool secret = CallTable.Get(id).HasSecret; // C_InitPIN's PIN
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        rv = CallerArguments.WriteInput(context.Request, data, length);
        if (rv != CKR_OK) return rv;
        rv = Finish(connection, context);
        if (secret) context.Scrub();
        return rv;
    }

    /// <summary>Shape DataData ("uayay" → ""): C_Verify, C_SetPIN.</summary>
    public static ulong DataData(RpcCallId id, nuint session, byte* first, nuint firstLength, byte* second, nuint secondLength)
    {
        bool secret = CallTable.Get(id).HasSecret; // C_SetPIN's PINs
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        rv = CallerArguments.WriteInput(context.Request, first, firstLength);
        if (rv == CKR_OK) rv = CallerArguments.WriteInput(context.Request, second, secondLength);
        if (rv != CKR_OK) { if (secret) context.Scrub(); return rv; }
        rv = Finish(connection, context);
        if (secret) context.Scrub();
        return rv;
    }

    /// <summary>Reads a single CK_ULONG reply value ("u") into the caller's pointer.</summary>
    private static ulong ReadHandle(CallContext context, nuint* handle)
    {
        if (!context.Response.TryReadULong(out ulong value) || !context.Response.Complete)
            return Malformed(context);
        *handle = (nuint)value;
        return CKR_OK;
    }

    // ---- slots, tokens, sessions --------------------------------------------------------------------

    public static ulong GetMechanismList(nuint slotId, nuint* list, nuint* count)
    {
        if (count == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GetMechanismList, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(slotId);
        context.Request.WriteULongBuffer(list == null ? 0u : Capacity(*count));
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        rv = ReadULongArray(context, list, count);
        if (rv == CKR_OK && list != null && connection.Profile.MechanismEncoding == MechanismEncoding.TypeThenParameter)
        {
            // Older peers cannot carry every mechanism: hide those, as p11-kit's client does.
            nuint kept = 0;
            for (nuint i = 0; i < *count; i++)
                if (connection.Profile.CanCarry(list[i]))
                    list[kept++] = list[i];
            *count = kept;
        }
        return rv;
    }

    public static ulong GetMechanismInfo(nuint slotId, nuint type, CK_MECHANISM_INFO* info)
    {
        if (info == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GetMechanismInfo, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (connection.Profile.MechanismEncoding == MechanismEncoding.TypeThenParameter && !connection.Profile.CanCarry(type))
            return CKR_MECHANISM_INVALID;
        context.Request.WriteULong(slotId);
        context.Request.WriteULong(type);
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        var reply = context.Response;
        if (!reply.TryReadULong(out ulong min) || !reply.TryReadULong(out ulong max) ||
            !reply.TryReadULong(out ulong flags) || !reply.Complete)
            return Malformed(context);
        *info = new CK_MECHANISM_INFO { ulMinKeySize = (nuint)min, ulMaxKeySize = (nuint)max, flags = (nuint)flags };
        return CKR_OK;
    }

    public static ulong InitToken(nuint slotId, byte* pin, nuint pinLength, byte* label)
    {
        if (label == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_InitToken, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        // Version 0 knows only C_InitToken with the label as a string; send the 32 padded bytes,
        // which the server NUL-terminates (a C label is not NUL-terminated).
        if (connection.Profile.Version >= 1)
            context = CallContext.For(connection, RpcCallId.C_InitToken2);
        context.Request.WriteULong(slotId);
        rv = CallerArguments.WriteInput(context.Request, pin, pinLength);
        if (rv != CKR_OK) { context.Scrub(); return rv; }
        var padded = new ReadOnlySpan<byte>(label, 32);
        if (connection.Profile.Version >= 1) context.Request.WriteSpaceString(padded);
        else context.Request.WriteZeroString(padded);
        rv = Finish(connection, context);
        context.Scrub();
        return rv;
    }

    public static ulong OpenSession(nuint slotId, nuint flags, nuint* session)
    {
        if (session == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_OpenSession, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(slotId);
        context.Request.WriteULong(flags);
        rv = connection.Exchange(context);
        if (rv == CKR_OK) rv = ReadHandle(context, session);
        if (rv == CKR_OK && !connection.TryToCaller(*session, out *session))
        {
            Log.Error($"C_OpenSession: session handle {*session} is too large to tell it from earlier connections");
            return CKR_DEVICE_ERROR;
        }
        return rv;
    }

    public static ulong GetSessionInfo(nuint session, CK_SESSION_INFO* info)
    {
        if (info == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GetSessionInfo, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        var reply = context.Response;
        if (!reply.TryReadULong(out ulong slot) || !reply.TryReadULong(out ulong state) ||
            !reply.TryReadULong(out ulong flags) || !reply.TryReadULong(out ulong deviceError) || !reply.Complete)
            return Malformed(context);
        *info = new CK_SESSION_INFO { slotID = (nuint)slot, state = (nuint)state, flags = (nuint)flags, ulDeviceError = (nuint)deviceError };
        return CKR_OK;
    }

    public static ulong SetOperationState(nuint session, byte* state, nuint stateLength, nuint encryptionKey, nuint authenticationKey)
    {
        ulong rv = Begin(RpcCallId.C_SetOperationState, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        rv = CallerArguments.WriteInput(context.Request, state, stateLength);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(encryptionKey);
        context.Request.WriteULong(authenticationKey);
        return Finish(connection, context);
    }

    public static ulong Login(nuint session, nuint userType, byte* pin, nuint pinLength)
    {
        ulong rv = Begin(RpcCallId.C_Login, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteULong(userType);
        rv = CallerArguments.WriteInput(context.Request, pin, pinLength);
        if (rv == CKR_OK) rv = Finish(connection, context);
        context.Scrub();
        return rv;
    }

    public static ulong LoginUser(nuint session, nuint userType, byte* pin, nuint pinLength, byte* username, nuint usernameLength)
    {
        ulong rv = Begin(RpcCallId.C_LoginUser, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteULong(userType);
        rv = CallerArguments.WriteInput(context.Request, pin, pinLength);
        if (rv == CKR_OK) rv = CallerArguments.WriteInput(context.Request, username, usernameLength);
        if (rv == CKR_OK) rv = Finish(connection, context);
        context.Scrub();
        return rv;
    }

    public static ulong WaitForSlotEvent(nuint flags, nuint* slot, void* reserved)
    {
        if (slot == null || reserved != null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_WaitForSlotEvent, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(flags);
        rv = connection.Exchange(context);
        return rv != CKR_OK ? rv : ReadHandle(context, slot);
    }

    public static ulong GenerateRandom(nuint session, byte* output, nuint length)
    {
        if (output == null && length != 0) return CKR_ARGUMENTS_BAD;
        ulong rv = ModuleState.TryGet(out var connection);
        if (rv != CKR_OK) return rv;
        if (length == 0 && output != null && connection.Profile.Version == 0)
        {
            // Version 0 cannot send a zero-length buffer (0 means "size query", which SoftHSM and
            // others refuse for random data): ask for one byte and hand back none, which keeps
            // the session checks and the result a direct call would give.
            byte scratch;
            nuint one = 1;
            rv = ToData(RpcCallId.C_GenerateRandom, session, &scratch, &one);
            return rv;
        }
        nuint received = length;
        rv = ToData(RpcCallId.C_GenerateRandom, session, output, &received);
        // The caller's length is exact: more bytes than asked is the broker's fault, not a size to grow to.
        if (rv == CKR_BUFFER_TOO_SMALL)
        {
            Log.Error($"C_GenerateRandom: the broker returned {received} bytes for {length} asked");
            return CKR_DEVICE_ERROR;
        }
        // The caller asked for exactly this many bytes; fewer is not a valid answer.
        if (rv == CKR_OK && received != length)
        {
            Log.Error($"C_GenerateRandom: the broker returned {received} bytes for {length} asked");
            return CKR_DEVICE_ERROR;
        }
        return rv;
    }

    // ---- objects ---------------------------------------------------------------------------------------

    /// <summary>C_CreateObject ("uaA") and C_CopyObject ("uuaA"): a template in, a handle out.</summary>
    public static ulong CreateObject(RpcCallId id, nuint session, nuint? source, CK_ATTRIBUTE* template, nuint count, nuint* handle)
    {
        if (handle == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        if (source is { } sourceHandle) context.Request.WriteULong(sourceHandle);
        rv = CallerArguments.WriteTemplate(context.Request, template, count);
        if (rv != CKR_OK) { context.Scrub(); return rv; }
        rv = connection.Exchange(context);
        if (rv == CKR_OK) rv = ReadHandle(context, handle);
        context.Scrub(); // templates may carry secret key values
        return rv;
    }

    public static ulong GetObjectSize(nuint session, nuint handle, nuint* size)
    {
        if (size == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GetObjectSize, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteULong(handle);
        rv = connection.Exchange(context);
        return rv != CKR_OK ? rv : ReadHandle(context, size);
    }

    public static ulong GetAttributeValue(nuint session, nuint handle, CK_ATTRIBUTE* template, nuint count)
    {
        if (template == null && count != 0) return CKR_ARGUMENTS_BAD;
        // The second pass of a two-pass read, answered from what the first one fetched.
        if (CallContext.Current?.Prefetch is { Holding: true } kept && ModuleState.TryGet(out var current) == CKR_OK &&
            kept.TryServe(current, session, handle, template, count))
            return CKR_OK;
        ulong rv = Begin(RpcCallId.C_GetAttributeValue, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        if (AttributePrefetch.Applies(connection.Profile, template, count))
        {
            if (TrySizesWithValues(connection, context, brokerSession, session, handle, template, count, out rv)) return rv;
            rv = Begin(RpcCallId.C_GetAttributeValue, out connection, out context);
            if (rv != CKR_OK) return rv;
        }
        context.Request.WriteULong(brokerSession);
        context.Request.WriteULong(handle);
        rv = CallerArguments.WriteAttributeBuffers(context.Request, template, count);
        if (rv != CKR_OK) return rv;
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        rv = CallerArguments.ReadTemplateValues(context.Response, template, count);
        if (rv == CKR_DEVICE_ERROR || !context.Response.Complete) rv = Malformed(context);
        context.Scrub();
        return rv;
    }

    /// <summary>
    /// A size query sent as a fetch with room for small values (see <see cref="AttributePrefetch"/>):
    /// true with the sizes when every value came back (kept for the next call) or with the CK_RV that
    /// ends the call; false when the size query must be sent the ordinary way.
    /// </summary>
    private static bool TrySizesWithValues(Connection connection, CallContext context, nuint brokerSession, nuint session, nuint handle,
        CK_ATTRIBUTE* template, nuint count, out ulong rv)
    {
        var request = context.Request;
        request.WriteULong(brokerSession);
        request.WriteULong(handle);
        request.BeginAttributeBuffer((uint)count);
        for (nuint i = 0; i < count; i++)
            AttributeCodec.WriteBufferEntry(request.Writer, template[i].type, AttributePrefetch.CapacityPerAttribute);
        rv = connection.Exchange(context);
        if (rv is CKR_DEVICE_ERROR or CKR_DEVICE_REMOVED) return true;
        if (rv != CKR_OK) return false; // the size query gives the error in its own terms
        var reply = context.Response;
        if (!reply.TryReadAttributeArray(out var attributes) || (nuint)attributes.Length != count ||
            !reply.TryReadULong(out ulong callRv) || !reply.Complete)
        {
            context.Scrub();
            rv = Malformed(context);
            return true;
        }
        for (int i = 0; i < attributes.Length; i++)
        {
            if (attributes[i].Type != template[i].type)
            {
                context.Scrub();
                rv = Malformed(context);
                return true;
            }
        }
        bool kept = callRv == CKR_OK && context.Prefetch.TryKeep(connection, session, handle, attributes);
        if (kept)
            for (int i = 0; i < attributes.Length; i++)
                template[i].ulValueLen = (nuint)attributes[i].NativeLength;
        context.Scrub();
        rv = CKR_OK;
        return kept;
    }

    /// <summary>C_SetAttributeValue ("uuaA") and C_FindObjectsInit ("uaA").</summary>
    public static ulong Template(RpcCallId id, nuint session, nuint? handle, CK_ATTRIBUTE* template, nuint count)
    {
        ulong rv = Begin(id, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        if (handle is { } h) context.Request.WriteULong(h);
        rv = CallerArguments.WriteTemplate(context.Request, template, count);
        if (rv == CKR_OK) rv = Finish(connection, context);
        context.Scrub();
        return rv;
    }

    public static ulong FindObjects(nuint session, nuint* handles, nuint maxCount, nuint* count)
    {
        if (count == null || (handles == null && maxCount != 0)) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_FindObjects, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        context.Request.WriteULongBuffer(Capacity(maxCount));
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        nuint found = maxCount;
        rv = ReadULongArray(context, handles, &found);
        // More handles than asked for is the broker's fault: PKCS#11 returns at most maxCount.
        if (rv == CKR_BUFFER_TOO_SMALL) return Malformed(context);
        if (rv == CKR_OK) *count = found;
        return rv;
    }

    // ---- keys ------------------------------------------------------------------------------------------

    public static ulong GenerateKey(nuint session, CK_MECHANISM* mechanism, CK_ATTRIBUTE* template, nuint count, nuint* key)
    {
        if (key == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GenerateKey, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = MechanismMarshal.FromNative(connection.Profile, mechanism, out var wire);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        rv = context.Request.WriteMechanism(wire);
        if (rv == CKR_OK) rv = CallerArguments.WriteTemplate(context.Request, template, count);
        if (rv != CKR_OK) return rv;
        rv = connection.Exchange(context);
        return rv != CKR_OK ? rv : ReadHandle(context, key);
    }

    public static ulong GenerateKeyPair(nuint session, CK_MECHANISM* mechanism, CK_ATTRIBUTE* publicTemplate, nuint publicCount,
        CK_ATTRIBUTE* privateTemplate, nuint privateCount, nuint* publicKey, nuint* privateKey)
    {
        if (publicKey == null || privateKey == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GenerateKeyPair, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = MechanismMarshal.FromNative(connection.Profile, mechanism, out var wire);
        if (rv != CKR_OK) return rv;
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        rv = context.Request.WriteMechanism(wire);
        if (rv == CKR_OK) rv = CallerArguments.WriteTemplate(context.Request, publicTemplate, publicCount);
        if (rv == CKR_OK) rv = CallerArguments.WriteTemplate(context.Request, privateTemplate, privateCount);
        if (rv != CKR_OK) return rv;
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        var reply = context.Response;
        if (!reply.TryReadULong(out ulong pub) || !reply.TryReadULong(out ulong priv) || !reply.Complete)
            return Malformed(context);
        *publicKey = (nuint)pub;
        *privateKey = (nuint)priv;
        return CKR_OK;
    }

    public static ulong WrapKey(nuint session, CK_MECHANISM* mechanism, nuint wrappingKey, nuint key, byte* wrapped, nuint* wrappedLength)
    {
        if (wrappedLength == null) return CKR_ARGUMENTS_BAD;
        ulong rv = BeginWithMechanism(RpcCallId.C_WrapKey, session, mechanism, out var connection, out var context, out var wire);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(wrappingKey);
        context.Request.WriteULong(key);
        nuint capacity = *wrappedLength;
        CallerArguments.WriteOutputCapacity(context.Request, wrapped, wrappedLength);
        return ExchangeForOutput(connection, context, wrapped, wrappedLength, capacity);
    }

    public static ulong UnwrapKey(nuint session, CK_MECHANISM* mechanism, nuint unwrappingKey, byte* wrapped, nuint wrappedLength,
        CK_ATTRIBUTE* template, nuint count, nuint* key)
    {
        if (key == null) return CKR_ARGUMENTS_BAD;
        ulong rv = BeginWithMechanism(RpcCallId.C_UnwrapKey, session, mechanism, out var connection, out var context, out var wire);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(unwrappingKey);
        rv = CallerArguments.WriteInput(context.Request, wrapped, wrappedLength);
        if (rv == CKR_OK) rv = CallerArguments.WriteTemplate(context.Request, template, count);
        if (rv != CKR_OK) return rv;
        rv = connection.Exchange(context);
        return rv != CKR_OK ? rv : ReadHandle(context, key);
    }

    public static ulong DeriveKey(nuint session, CK_MECHANISM* mechanism, nuint baseKey, CK_ATTRIBUTE* template, nuint count, nuint* key)
    {
        ulong rv = Begin(RpcCallId.C_DeriveKey, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        // Version 2 peers answer with C_DeriveKey2, which can write back into the mechanism
        // parameter (IBM BTC derive, Kyber); key may then be NULL for Kyber encapsulation.
        bool version2 = connection.Profile.Version >= 2;
        if (key == null && !version2) return CKR_ARGUMENTS_BAD;
        rv = MechanismMarshal.FromNative(connection.Profile, mechanism, out var wire);
        if (rv != CKR_OK) return rv;
        if (version2) context = CallContext.For(connection, RpcCallId.C_DeriveKey2);
        if (!connection.TryToBroker(session, out var brokerSession)) return CKR_SESSION_HANDLE_INVALID;
        context.Request.WriteULong(brokerSession);
        rv = context.Request.WriteMechanism(wire);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(baseKey);
        rv = CallerArguments.WriteTemplate(context.Request, template, count);
        if (rv != CKR_OK) return rv;
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        var reply = context.Response;
        if (!version2)
            return key == null ? CKR_ARGUMENTS_BAD : ReadHandle(context, key);
        // The reply of C_DeriveKey2 is the CK_RV, the parameter update, then the key.
        if (!reply.TryReadULong(out ulong deriveRv) ||
            !reply.TryReadMechanismUpdate(wire.Type, out var update) ||
            !reply.TryReadULong(out ulong handle) || !reply.Complete)
            return Malformed(context);
        rv = MechanismUpdates.Apply(mechanism, update);
        if (rv != CKR_OK) return rv;
        if (key != null && deriveRv == CKR_OK) *key = (nuint)handle;
        return deriveRv;
    }
}
