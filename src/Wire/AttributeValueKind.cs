namespace P11Proxy.Wire;

/// <summary>
/// How an attribute value travels. Both ends must derive the kind from the attribute type with
/// the same map, otherwise values are silently misread; see <see cref="WireProfile"/>.
/// </summary>
public enum AttributeValueKind : byte
{
    Byte,               // CK_BBOOL and other one-byte values
    ULong,              // CK_ULONG as 64 bits
    AttributeArray,     // nested template (CKA_WRAP_TEMPLATE ...)
    MechanismTypeArray, // CKA_ALLOWED_MECHANISMS
    Date,               // CK_DATE, empty or 8 bytes
    ByteArray,          // everything else
}
