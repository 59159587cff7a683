using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// Client side of each call: arguments from the C caller are written in the order of the call
/// table's request signature, reply values read in the order of its response signature, and
/// copied into the caller's memory only within the sizes the caller gave.
/// </summary>
internal static unsafe partial class Remote
{
    private static ulong Begin(RpcCallId id, out Connection connection, out CallContext context)
    {
        context = null!;
        ulong rv = ModuleState.TryGet(out connection);
        if (rv != CKR_OK)
            return rv;
        if (connection.Broken)
        {
            if (!CallTable.Get(id).MayReconnect)
                return CKR_DEVICE_REMOVED;
            rv = ModuleState.Reconnect(connection);
            if (rv != CKR_OK)
                return rv;
            ModuleState.TryGet(out connection);
        }
        var call = CallTable.Get(id);
        if (!connection.Profile.Knows(call))
            return CKR_FUNCTION_NOT_SUPPORTED;
        context = CallContext.For(connection, id);
        return CKR_OK;
    }

    /// <summary>A reply that does not match its signature is the broker's fault, never the caller's.</summary>
    private static ulong Malformed(CallContext context)
    {
        Log.Error($"{context.Request.Call?.Name}: malformed reply values from the broker");
        return CKR_DEVICE_ERROR;
    }

    public static ulong Initialize(Connection connection, ReadOnlySpan<byte> reserved, bool hasReserved)
    {
        var context = CallContext.For(connection, RpcCallId.C_Initialize);
        var request = context.Request;
        request.WriteByteArray(CallTable.Handshake);
        request.WriteByte(hasReserved ? (byte)1 : (byte)0);
        // The reserved string travels with its NUL, as p11-kit's client sends it.
        Span<byte> withNul = stackalloc byte[reserved.Length + 1];
        reserved.CopyTo(withNul);
        withNul[^1] = 0;
        request.WriteByteArray(withNul);
        ulong rv = connection.Exchange(context);
        if (rv == CKR_OK && Capabilities.Announces(context.ReplyOptions, Capabilities.TypedMessageParameters))
        {
            connection.UseTypedMessageParameters();
            Log.Trace($"the broker at {connection.Address} takes typed message parameters");
        }
        return rv;
    }

    /// <summary>Tells the broker, unless a call stalled on it holds the connection for more than a second.</summary>
    public static ulong Finalize(Connection connection)
    {
        var context = CallContext.For(connection, RpcCallId.C_Finalize);
        return connection.FinalizeAndClose(context, 1000);
    }

    public static ulong GetInfo(CK_INFO* info)
    {
        if (info == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GetInfo, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        var reply = context.Response;
        if (!reply.TryReadVersion(out byte major, out byte minor) ||
            !reply.TryReadSpaceString(out _) ||
            !reply.TryReadULong(out ulong flags) ||
            !reply.TryReadSpaceString(out _) ||
            !reply.TryReadVersion(out _, out _) || !reply.Complete)
            return Malformed(context);
        *info = default;
        info->cryptokiVersion = new CK_VERSION { major = major, minor = minor };
        // Our own identity (GnuTLS drops a module whose C_GetInfo equals another's), with the
        // cryptoki version and flags of what the broker serves.
        Pkcs11Abi.WritePadded(new Span<byte>(info->manufacturerID, 32), Identity.Manufacturer);
        info->flags = (nuint)flags;
        Pkcs11Abi.WritePadded(new Span<byte>(info->libraryDescription, 32), Identity.ModuleDescription);
        info->libraryVersion = new CK_VERSION { major = Identity.VersionMajor, minor = Identity.VersionMinor };
        return CKR_OK;
    }

    /// <summary>
    /// Whether the peer is our broker, which takes what p11-kit's server cannot (an IV of any
    /// length) and checks what it does not (slot ids in C_CloseAllSessions). Asked with C_GetInfo
    /// (our broker names itself there) the first time it matters on a connection, then known; it
    /// uses this thread's call context, so a caller builds its request afterwards.
    /// </summary>
    public static bool PeerIsOurBroker(Connection connection)
    {
        int kind = Volatile.Read(ref connection.PeerKind);
        if (kind != 0) return kind == 1;
        var context = CallContext.For(connection, RpcCallId.C_GetInfo);
        if (connection.Exchange(context) != CKR_OK) return false;
        var reply = context.Response;
        bool ours = reply.TryReadVersion(out _, out _) && reply.TryReadSpaceString(out var manufacturer) &&
                    reply.TryReadULong(out _) && reply.TryReadSpaceString(out var description) &&
                    Identity.IsOurBroker(manufacturer.Span, description.Span);
        Volatile.Write(ref connection.PeerKind, ours ? 1 : 2);
        return ours;
    }

    /// <summary>
    /// C_CloseAllSessions. p11-kit's server answers CKR_OK for any slot id (its proxy closes the
    /// sessions it knows on that slot, and knows no slot to refuse): there the slot is checked
    /// after, as the backend would have checked it. Our broker checks it itself.
    /// </summary>
    public static ulong CloseAllSessions(nuint slotId)
    {
        ulong rv = Begin(RpcCallId.C_CloseAllSessions, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(slotId); // a slot: no session handle to map
        rv = Finish(connection, context);
        if (rv != CKR_OK || ModuleState.TryGet(out connection) != CKR_OK || PeerIsOurBroker(connection))
            return rv;
        CK_SLOT_INFO info;
        rv = GetSlotInfo(slotId, &info);
        return rv == CKR_SLOT_ID_INVALID ? rv : CKR_OK;
    }

    public static ulong GetSlotList(byte tokenPresent, nuint* slotList, nuint* count)
    {
        if (count == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GetSlotList, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        context.Request.WriteByte(tokenPresent);
        context.Request.WriteULongBuffer(slotList == null ? 0u : Capacity(*count));
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        return ReadULongArray(context, slotList, count);
    }

    public static ulong GetSlotInfo(nuint slotId, CK_SLOT_INFO* info)
    {
        if (info == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GetSlotInfo, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(slotId);
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        var reply = context.Response;
        if (!reply.TryReadSpaceString(out var description) ||
            !reply.TryReadSpaceString(out var manufacturer) ||
            !reply.TryReadULong(out ulong flags) ||
            !reply.TryReadVersion(out byte hwMajor, out byte hwMinor) ||
            !reply.TryReadVersion(out byte fwMajor, out byte fwMinor) || !reply.Complete)
            return Malformed(context);
        *info = default;
        description.Span.CopyTo(new Span<byte>(info->slotDescription, 64));
        manufacturer.Span.CopyTo(new Span<byte>(info->manufacturerID, 32));
        info->flags = (nuint)flags;
        info->hardwareVersion = new CK_VERSION { major = hwMajor, minor = hwMinor };
        info->firmwareVersion = new CK_VERSION { major = fwMajor, minor = fwMinor };
        return CKR_OK;
    }

    public static ulong GetTokenInfo(nuint slotId, CK_TOKEN_INFO* info)
    {
        if (info == null) return CKR_ARGUMENTS_BAD;
        ulong rv = Begin(RpcCallId.C_GetTokenInfo, out var connection, out var context);
        if (rv != CKR_OK) return rv;
        context.Request.WriteULong(slotId);
        rv = connection.Exchange(context);
        if (rv != CKR_OK) return rv;
        var reply = context.Response;
        CK_TOKEN_INFO result = default;
        Span<ulong> numbers = stackalloc ulong[11];
        if (!reply.TryReadSpaceString(out var label) ||
            !reply.TryReadSpaceString(out var manufacturer) ||
            !reply.TryReadSpaceString(out var model) ||
            !reply.TryReadSpaceString(out var serial))
            return Malformed(context);
        for (int i = 0; i < numbers.Length; i++)
            if (!reply.TryReadULong(out numbers[i]))
                return Malformed(context);
        if (!reply.TryReadVersion(out byte hwMajor, out byte hwMinor) ||
            !reply.TryReadVersion(out byte fwMajor, out byte fwMinor) ||
            !reply.TryReadSpaceString(out var utcTime) || !reply.Complete)
            return Malformed(context);
        label.Span.CopyTo(new Span<byte>(result.label, 32));
        manufacturer.Span.CopyTo(new Span<byte>(result.manufacturerID, 32));
        model.Span.CopyTo(new Span<byte>(result.model, 16));
        serial.Span.CopyTo(new Span<byte>(result.serialNumber, 16));
        result.flags = (nuint)numbers[0];
        result.ulMaxSessionCount = (nuint)numbers[1];
        result.ulSessionCount = (nuint)numbers[2];
        result.ulMaxRwSessionCount = (nuint)numbers[3];
        result.ulRwSessionCount = (nuint)numbers[4];
        result.ulMaxPinLen = (nuint)numbers[5];
        result.ulMinPinLen = (nuint)numbers[6];
        result.ulTotalPublicMemory = (nuint)numbers[7];
        result.ulFreePublicMemory = (nuint)numbers[8];
        result.ulTotalPrivateMemory = (nuint)numbers[9];
        result.ulFreePrivateMemory = (nuint)numbers[10];
        result.hardwareVersion = new CK_VERSION { major = hwMajor, minor = hwMinor };
        result.firmwareVersion = new CK_VERSION { major = fwMajor, minor = fwMinor };
        utcTime.Span.CopyTo(new Span<byte>(result.utcTime, 16));
        *info = result;
        return CKR_OK;
    }

    /// <summary>A caller's CK_ULONG count as the 32-bit capacity the wire carries (larger buffers are clamped).</summary>
    private static uint Capacity(nuint count) => CallerArguments.Capacity(count);

    /// <summary>An 'au' reply into the caller's array (see <see cref="CallerArguments.ReadULongs"/>).</summary>
    private static ulong ReadULongArray(CallContext context, nuint* array, nuint* count)
    {
        ulong rv = CallerArguments.ReadULongs(context.Response, array, count);
        return rv == CKR_DEVICE_ERROR ? Malformed(context) : rv;
    }
}
