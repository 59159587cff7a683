using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire.Edge;

/// <summary>
/// Encodes C attribute templates (CK_ATTRIBUTE arrays, nested ones included) for the wire. Shared
/// by the module (caller templates) and the broker (templates the backend filled): the same source
/// file is compiled into both so the two directions cannot disagree.
/// </summary>
public static unsafe class NativeTemplates
{
    /// <summary>CK_UNAVAILABLE_INFORMATION as a native CK_ULONG.</summary>
    public static readonly nuint Unavailable = unchecked((nuint)ulong.MaxValue);

    /// <summary>Writes <paramref name="count"/> attributes (after the array count, which the caller wrote).</summary>
    public static ulong WriteAttributes(WireWriter writer, WireProfile profile, CK_ATTRIBUTE* template, nuint count, int depth = 0)
    {
        for (nuint i = 0; i < count; i++)
        {
            var attribute = template[i];
            if (attribute.ulValueLen == Unavailable)
            {
                AttributeCodec.WriteUnavailable(writer, attribute.type);
                continue;
            }
            if (attribute.ulValueLen > WireWriter.MaxArrayLength || attribute.type > uint.MaxValue)
                return CKR_ATTRIBUTE_VALUE_INVALID;
            if (profile.KindOf(attribute.type) == AttributeValueKind.AttributeArray && attribute.pValue != null)
            {
                if (depth + 1 >= AttributeCodec.MaxDepth) return CKR_TEMPLATE_INCONSISTENT;
                nuint nested = attribute.ulValueLen / (nuint)sizeof(CK_ATTRIBUTE);
                AttributeCodec.WriteNestedHeader(writer, attribute.type, attribute.ulValueLen, (uint)nested);
                ulong rv = WriteAttributes(writer, profile, (CK_ATTRIBUTE*)attribute.pValue, nested, depth + 1);
                if (rv != CKR_OK) return rv;
                continue;
            }
            var value = attribute.pValue == null
                ? ReadOnlySpan<byte>.Empty
                : new ReadOnlySpan<byte>(attribute.pValue, (int)attribute.ulValueLen);
            if (!AttributeCodec.WriteFlat(writer, profile, attribute.type, attribute.ulValueLen, value, attribute.pValue == null))
                return CKR_ATTRIBUTE_VALUE_INVALID;
        }
        return CKR_OK;
    }
}
