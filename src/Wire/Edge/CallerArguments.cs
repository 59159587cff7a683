using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire.Edge;

/// <summary>
/// Moves values between the C caller's memory and the wire. Everything here reads only what the
/// caller declared (pointer and length) and writes only within the caller's declared capacity,
/// whatever the broker sends.
/// </summary>
public static unsafe class CallerArguments
{
    private static readonly nuint Unavailable = NativeTemplates.Unavailable;

    /// <summary>An input byte array ('ay'): NULL with a length is the caller's mistake.</summary>
    public static ulong WriteInput(RpcMessageWriter request, byte* data, nuint length)
    {
        if (data == null)
        {
            if (length != 0) return CKR_ARGUMENTS_BAD;
            request.WriteByteArray(WireBytes.Null);
            return CKR_OK;
        }
        if (length > WireWriter.MaxArrayLength) return CKR_DATA_LEN_RANGE;
        request.WriteByteArray(new ReadOnlySpan<byte>(data, (int)length));
        return CKR_OK;
    }

    /// <summary>
    /// An output buffer ('fy'): 0 asks for the size (NULL buffer). A non-NULL buffer of length 0 is
    /// sent as 0xffffffff to peers of version 1 and later, as p11-kit does since 0.25; version 0
    /// cannot express it, so it is a size query there (the answer is then the same by the spec).
    /// </summary>
    public static void WriteOutputCapacity(RpcMessageWriter request, byte* buffer, nuint* length)
    {
        uint capacity;
        if (buffer == null) capacity = 0;
        else if (*length == 0) capacity = request.Profile.Version >= 1 ? RpcMessageWriter.ZeroLengthBuffer : 0;
        else capacity = *length > uint.MaxValue - 1 ? uint.MaxValue - 1 : (uint)*length;
        request.WriteByteBuffer(capacity);
    }

    /// <summary>Reads an 'ay' reply into the caller's buffer with PKCS#11's size-query rules.</summary>
    public static ulong ReadOutput(RpcMessageReader reply, byte* buffer, nuint* length, nuint capacity)
    {
        if (!reply.TryReadByteArray(out bool present, out var data, out uint needed))
            return CKR_DEVICE_ERROR;
        if (!present)
        {
            // 0xffffffff is the wire's NULL marker, never a size: a broker sending it as one is broken.
            if (needed == uint.MaxValue) return CKR_DEVICE_ERROR;
            *length = needed;
            return buffer == null ? CKR_OK : CKR_BUFFER_TOO_SMALL;
        }
        *length = (nuint)data.Length;
        if (buffer == null)
            return CKR_OK;
        if ((nuint)data.Length > capacity)
            return CKR_BUFFER_TOO_SMALL;
        data.Data.Span.CopyTo(new Span<byte>(buffer, data.Length));
        return CKR_OK;
    }

    /// <summary>A template with values ('aA'), nested templates included, within the depth limit.</summary>
    public static ulong WriteTemplate(RpcMessageWriter request, CK_ATTRIBUTE* template, nuint count)
    {
        if (template == null && count != 0) return CKR_ARGUMENTS_BAD;
        if (count > uint.MaxValue) return CKR_ARGUMENTS_BAD;
        request.BeginAttributeArray((uint)count);
        return NativeTemplates.WriteAttributes(request.Writer, request.Profile, template, count);
    }

    /// <summary>The request side of C_GetAttributeValue ('fA'): types and buffer sizes only.</summary>
    public static ulong WriteAttributeBuffers(RpcMessageWriter request, CK_ATTRIBUTE* template, nuint count)
    {
        if (template == null && count != 0) return CKR_ARGUMENTS_BAD;
        if (count > uint.MaxValue) return CKR_ARGUMENTS_BAD;
        request.BeginAttributeBuffer((uint)count);
        return WriteBufferEntries(request.Writer, request.Profile, template, count, 0);
    }

    private static ulong WriteBufferEntries(WireWriter writer, WireProfile profile, CK_ATTRIBUTE* template, nuint count, int depth)
    {
        for (nuint i = 0; i < count; i++)
        {
            var attribute = template[i];
            nuint length = attribute.pValue == null ? 0 : attribute.ulValueLen;
            if (length == Unavailable) length = 0;
            if (length > WireWriter.MaxArrayLength) length = WireWriter.MaxArrayLength;
            AttributeCodec.WriteBufferEntry(writer, attribute.type, length);
            // Nested entries follow only a non-zero length: a reader (ours, p11-kit's server)
            // takes a zero length for "no buffer" and reads the next entry at once.
            if (length != 0 && profile.NestedAttributeBuffers && profile.KindOf(attribute.type) == AttributeValueKind.AttributeArray)
            {
                if (depth + 1 > AttributeCodec.MaxDepth) return CKR_TEMPLATE_INCONSISTENT;
                nuint nested = length / (nuint)sizeof(CK_ATTRIBUTE);
                writer.WriteUInt32((uint)nested);
                ulong rv = WriteBufferEntries(writer, profile, (CK_ATTRIBUTE*)attribute.pValue, nested, depth + 1);
                if (rv != CKR_OK) return rv;
            }
        }
        return CKR_OK;
    }

    /// <summary>
    /// The reply of C_GetAttributeValue ('aAu'): fills the caller's template by the spec's rules
    /// (size query, copy, CK_UNAVAILABLE_INFORMATION when unavailable or too small) and returns the
    /// call's CK_RV. A reply with other types, another count or values beyond the caller's
    /// buffers is refused as CKR_DEVICE_ERROR, never written.
    /// </summary>
    public static ulong ReadTemplateValues(RpcMessageReader reply, CK_ATTRIBUTE* template, nuint count)
    {
        if (!reply.TryReadAttributeArray(out var attributes) || (nuint)attributes.Length != count)
            return CKR_DEVICE_ERROR;
        ulong rv = CKR_OK;
        for (int i = 0; i < attributes.Length; i++)
        {
            if (attributes[i].Type != template[i].type)
                return CKR_DEVICE_ERROR;
        }
        for (int i = 0; i < attributes.Length; i++)
        {
            ulong attributeRv = Fill(&template[i], attributes[i], 0);
            if (attributeRv == CKR_DEVICE_ERROR) return CKR_DEVICE_ERROR;
            if (attributeRv != CKR_OK && rv == CKR_OK) rv = attributeRv;
        }
        if (!reply.TryReadULong(out ulong callRv))
            return CKR_DEVICE_ERROR;
        // The broker's code wins (it knows sensitive from invalid); ours covers sizes it cannot see.
        return callRv != CKR_OK ? callRv : rv;
    }

    private static ulong Fill(CK_ATTRIBUTE* target, WireAttribute source, int depth)
    {
        if (!source.Valid)
        {
            target->ulValueLen = Unavailable;
            return CKR_OK;
        }
        if (target->pValue == null)
        {
            target->ulValueLen = source.Length;
            return CKR_OK;
        }
        if (source.Kind == AttributeValueKind.AttributeArray)
        {
            var nested = source.Nested ?? [];
            nuint capacity = target->ulValueLen / (nuint)sizeof(CK_ATTRIBUTE);
            // A size answer (no entries, a length) for a buffer too small for it: too small, as direct.
            if ((nuint)nested.Length > capacity || (nested.Length == 0 && source.Length > target->ulValueLen))
            {
                target->ulValueLen = Unavailable;
                return CKR_BUFFER_TOO_SMALL;
            }
            var inner = (CK_ATTRIBUTE*)target->pValue;
            ulong rv = CKR_OK;
            for (int i = 0; i < nested.Length; i++)
            {
                if (depth + 1 >= AttributeCodec.MaxDepth) return CKR_DEVICE_ERROR;
                // The caller prepared the nested types; a template answers in kind.
                if (inner[i].type != nested[i].Type && inner[i].pValue != null)
                    return CKR_DEVICE_ERROR;
                inner[i].type = (nuint)nested[i].Type;
                ulong innerRv = Fill(&inner[i], nested[i], depth + 1);
                if (innerRv == CKR_DEVICE_ERROR) return innerRv;
                if (innerRv != CKR_OK) rv = innerRv;
            }
            target->ulValueLen = (nuint)nested.Length * (nuint)sizeof(CK_ATTRIBUTE);
            return rv;
        }
        ulong needed = source.NativeLength;
        if (needed > target->ulValueLen)
        {
            target->ulValueLen = Unavailable;
            return CKR_BUFFER_TOO_SMALL;
        }
        int written = source.CopyFlatValueTo(new Span<byte>(target->pValue, (int)Math.Min(target->ulValueLen, int.MaxValue)));
        if (written < 0) return CKR_DEVICE_ERROR;
        target->ulValueLen = (nuint)written;
        return CKR_OK;
    }

    /// <summary>An 'fu' capacity: the caller's count, within what the wire can say.</summary>
    public static uint Capacity(nuint count) => count > uint.MaxValue - 1 ? uint.MaxValue - 1 : (uint)count;

    /// <summary>
    /// Reads an 'au' reply (the last part) into the caller's array with PKCS#11's rules: NULL array
    /// → size only; too small → CKR_BUFFER_TOO_SMALL with the needed count; never more than *count
    /// elements written. CKR_DEVICE_ERROR: the reply is malformed.
    /// </summary>
    public static ulong ReadULongs(RpcMessageReader reply, nuint* array, nuint* count)
    {
        if (!reply.TryReadULongArrayHeader(out bool present, out uint received))
            return CKR_DEVICE_ERROR;
        nuint capacity = *count;
        if (!present)
        {
            if (!reply.Complete || received == uint.MaxValue) return CKR_DEVICE_ERROR;
            *count = received;
            return array == null ? CKR_OK : CKR_BUFFER_TOO_SMALL;
        }
        if (array != null && received > capacity)
        {
            *count = received;
            return CKR_BUFFER_TOO_SMALL;
        }
        for (uint i = 0; i < received; i++)
        {
            if (!reply.TryReadULongElement(out ulong value))
                return CKR_DEVICE_ERROR;
            if (array != null)
                array[i] = (nuint)value;
        }
        if (!reply.Complete) return CKR_DEVICE_ERROR;
        *count = received;
        return CKR_OK;
    }
}
