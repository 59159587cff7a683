using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire.Edge;

/// <summary>
/// The broker's edge: request parts decoded into the backend's arguments (native memory from the
/// call's <see cref="NativeArena"/>), and what the backend wrote encoded into reply parts. The
/// mirror of the module's <see cref="CallerArguments"/>: each part's two halves sit side by side
/// here and there, and tests/Unit/CrossSide runs one against the other for every row of the table.
/// </summary>
public sealed unsafe class BackendArguments(RpcMessageReader request, RpcMessageWriter reply, NativeArena arena)
{
    /// <summary>Largest output buffer a client may make the broker allocate for one call.</summary>
    public const uint MaxOutputBuffer = 64u << 20;

    /// <summary>Inputs from this size on are passed to the backend where they lie in the request, not copied.</summary>
    public const int PinnedInputThreshold = 4096;

    /// <summary>'ay' argument into native memory (NULL stays NULL; an absent array keeps its length, as p11-kit does).</summary>
    public bool TryReadInput(out byte* data, out nuint length)
    {
        data = null;
        length = 0;
        if (!request.TryReadByteArray(out bool present, out var bytes, out uint declared))
            return false;
        if (!present)
        {
            length = declared;
            return true;
        }
        if (!bytes.IsNull)
            data = bytes.Length >= PinnedInputThreshold ? arena.Pin(bytes.Data) : arena.Copy(bytes.Data.Span);
        length = (nuint)bytes.Length;
        return true;
    }

    /// <summary>
    /// 'fy': the client's output capacity (0: size query; 0xffffffff: a zero-length non-NULL buffer).
    /// <see cref="ReadResult.Malformed"/> when absent; CKR_DEVICE_MEMORY above <see cref="MaxOutputBuffer"/>.
    /// </summary>
    public ReadResult ReadOutputCapacity(out uint capacity)
    {
        if (!request.TryReadByteBuffer(out capacity))
            return ReadResult.Malformed;
        if (capacity > MaxOutputBuffer && capacity != RpcMessageWriter.ZeroLengthBuffer)
            return ReadResult.Refused(CKR_DEVICE_MEMORY);
        return ReadResult.Ok;
    }

    /// <summary>'M': the mechanism rebuilt in native memory (NULL for the wire's NULL mechanism).</summary>
    public bool TryReadMechanism(out CK_MECHANISM* mechanism)
    {
        mechanism = null;
        if (!request.TryReadMechanism(out var wire))
            return false;
        mechanism = MechanismNative.ToNative(arena, wire);
        return true;
    }

    /// <summary>'aA' argument: a template with values, nested templates rebuilt as native arrays.</summary>
    public bool TryReadTemplate(out CK_ATTRIBUTE* template, out nuint count)
    {
        template = null;
        count = 0;
        if (!request.TryReadAttributeArray(out var attributes))
            return false;
        // An empty template is an empty array, not NULL: modules refuse a NULL template in calls
        // that accept an empty one (C_CopyObject, C_SetAttributeValue). The wire has no NULL template.
        template = attributes.Length == 0 ? arena.Alloc<CK_ATTRIBUTE>(1) : ToNative(attributes);
        count = (nuint)attributes.Length;
        return true;
    }

    private CK_ATTRIBUTE* ToNative(WireAttribute[] attributes)
    {
        if (attributes.Length == 0)
            return null;
        var template = arena.Alloc<CK_ATTRIBUTE>(attributes.Length);
        for (int i = 0; i < attributes.Length; i++)
        {
            var source = attributes[i];
            template[i].type = (nuint)source.Type;
            if (!source.Valid)
            {
                template[i].ulValueLen = NativeTemplates.Unavailable;
                continue;
            }
            if (source.Kind == AttributeValueKind.AttributeArray)
            {
                var nested = source.Nested ?? [];
                template[i].pValue = ToNative(nested);
                template[i].ulValueLen = (nuint)(nested.Length * sizeof(CK_ATTRIBUTE));
                continue;
            }
            if (source.Kind is AttributeValueKind.ByteArray or AttributeValueKind.Date && source.Bytes.IsNull)
            {
                // A NULL value with a length: the client asks nothing of it but its size.
                template[i].ulValueLen = source.Length;
                continue;
            }
            // Only what actually arrived is allocated; the announced length is not trusted.
            ulong size = source.NativeLength;
            var value = (byte*)arena.Alloc((nuint)size);
            source.CopyFlatValueTo(new Span<byte>(value, (int)size));
            // An empty value stays a (zero-length) buffer: the caller gave one, not NULL.
            template[i].pValue = value;
            template[i].ulValueLen = (nuint)size;
        }
        return template;
    }

    /// <summary>'ay' reply after a call that filled a buffer, with p11-kit's conventions for sizes.</summary>
    public void WriteOutput(ulong rv, byte* buffer, nuint length)
    {
        if (length > WireWriter.MaxArrayLength)
        {
            // A length the wire cannot carry: as a size answer, the largest it can (the call's CK_RV
            // still travels: NSS softoken answers a too-small buffer for C_Sign with
            // CKR_BUFFER_TOO_SMALL and an uninitialised length); as data, nothing.
            if (rv == CKR_BUFFER_TOO_SMALL || buffer == null) reply.WriteByteArrayLengthOnly(WireWriter.MaxArrayLength);
            else reply.Writer.Fail();
            return;
        }
        if (rv == CKR_BUFFER_TOO_SMALL || buffer == null)
        {
            if (length != 0 || rv == CKR_BUFFER_TOO_SMALL) reply.WriteByteArrayLengthOnly((uint)length);
            else reply.WriteByteArray(WireBytes.Null);
            return;
        }
        reply.WriteByteArray(new ReadOnlySpan<byte>(buffer, (int)length));
    }

    /// <summary>'au' reply: an array when it fits the client's capacity, else only its length.</summary>
    public void WriteULongs(ulong rv, nuint* values, nuint count, bool arrayWanted)
    {
        if (rv == CKR_BUFFER_TOO_SMALL || !arrayWanted || values == null)
        {
            reply.WriteULongArrayLengthOnly((uint)Math.Min(count, uint.MaxValue));
            return;
        }
        Span<ulong> copy = count <= 64 ? stackalloc ulong[(int)count] : new ulong[(int)count];
        for (int i = 0; i < (int)count; i++) copy[i] = values[i];
        reply.WriteULongArray(copy);
    }
}

/// <summary>
/// What reading a request part came to: go on, refuse the call with a CK_RV, or the request is
/// malformed (the connection closes). Never a CK_RV value: no code a module returns can be taken for it.
/// </summary>
public readonly struct ReadResult
{
    private ReadResult(byte state, ulong rv) { _state = state; Rv = rv; }

    private readonly byte _state; // 0 ok, 1 refused, 2 malformed

    /// <summary>The CK_RV of a refused call (CKR_OK otherwise).</summary>
    public ulong Rv { get; }

    public bool IsOk => _state == 0;
    public bool IsMalformed => _state == 2;

    public static ReadResult Ok => default;
    public static ReadResult Malformed => new(2, 0);
    public static ReadResult Refused(ulong rv) => new(1, rv);
}
