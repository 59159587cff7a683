using P11Proxy.Pkcs11;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Module;

/// <summary>
/// The two-pass C_GetAttributeValue (ask the sizes, then fetch the values) in one round trip.
/// Nearly every client reads attributes that way (pkcs11-tool, NSS, OpenSSL's engine, p11-kit),
/// and over a socket the second pass costs as much as the first. When a size query names a few
/// flat attributes, the module asks the broker for the values too, with room for
/// <see cref="CapacityPerAttribute"/> bytes each, and reports the sizes. If the same thread's very
/// next call fetches exactly those attributes of the same object into buffers large enough, it is
/// answered from what came back. Anything else (an error, a value that did not fit, another
/// call in between, other attributes or smaller buffers) takes the ordinary path, so every
/// result and CK_RV is the one the token gives; the only difference is the moment the values
/// were read, which within one thread's two consecutive calls nobody else can order anyway.
/// Kept values are wiped when used or dropped (a non-sensitive key's CKA_VALUE may be among them).
/// </summary>
internal sealed unsafe class AttributePrefetch
{
    public const int MaxAttributes = 16;
    public const uint CapacityPerAttribute = 4096;

    private readonly ulong[] _types = new ulong[MaxAttributes];
    private readonly int[] _ends = new int[MaxAttributes];
    private byte[] _values = new byte[1024];
    private int _used;
    private int _count;
    private Connection? _connection;
    private nuint _session;
    private nuint _object;

    public bool Holding => _connection is not null;

    /// <summary>Whether a request for <paramref name="template"/> may ask for the values too.</summary>
    public static bool Applies(WireProfile profile, CK_ATTRIBUTE* template, nuint count)
    {
        if (count == 0 || count > MaxAttributes) return false;
        for (nuint i = 0; i < count; i++)
        {
            if (template[i].pValue != null) return false;
            if (profile.KindOf(template[i].type) == AttributeValueKind.AttributeArray) return false;
        }
        return true;
    }

    /// <summary>Keeps the values of a successful prefetch; false (nothing kept) if any is unusable.</summary>
    public bool TryKeep(Connection connection, nuint session, nuint handle, WireAttribute[] attributes)
    {
        Drop();
        int total = 0;
        foreach (var attribute in attributes)
        {
            if (!attribute.Valid || attribute.Kind == AttributeValueKind.AttributeArray) return false;
            if (attribute.Kind is AttributeValueKind.ByteArray or AttributeValueKind.Date && attribute.Bytes.IsNull) return false;
            ulong length = attribute.NativeLength;
            if (length > CapacityPerAttribute) return false;
            total += (int)length;
        }
        if (_values.Length < total)
            _values = new byte[Math.Max(total, _values.Length * 2)];
        int end = 0;
        for (int i = 0; i < attributes.Length; i++)
        {
            int written = attributes[i].CopyFlatValueTo(_values.AsSpan(end, (int)attributes[i].NativeLength));
            if (written < 0)
            {
                Array.Clear(_values, 0, end);
                return false;
            }
            end += written;
            _types[i] = attributes[i].Type;
            _ends[i] = end;
        }
        _used = end;
        _count = attributes.Length;
        _connection = connection;
        _session = session;
        _object = handle;
        return true;
    }

    /// <summary>
    /// Answers the fetch that follows a prefetch, if it asks for exactly the kept attributes with
    /// room for each; the kept values are dropped either way.
    /// </summary>
    public bool TryServe(Connection connection, nuint session, nuint handle, CK_ATTRIBUTE* template, nuint count)
    {
        try
        {
            if (!ReferenceEquals(connection, _connection) || session != _session || handle != _object || count != (nuint)_count)
                return false;
            for (int i = 0; i < _count; i++)
            {
                int length = _ends[i] - (i == 0 ? 0 : _ends[i - 1]);
                if (template[i].type != (nuint)_types[i] || template[i].pValue == null || template[i].ulValueLen < (nuint)length)
                    return false;
            }
            for (int i = 0; i < _count; i++)
            {
                int start = i == 0 ? 0 : _ends[i - 1];
                int length = _ends[i] - start;
                _values.AsSpan(start, length).CopyTo(new Span<byte>(template[i].pValue, length));
                template[i].ulValueLen = (nuint)length;
            }
            return true;
        }
        finally
        {
            Drop();
        }
    }

    /// <summary>Forgets (and wipes) what was kept.</summary>
    public void Drop()
    {
        if (_used != 0) Array.Clear(_values, 0, _used);
        _used = 0;
        _count = 0;
        _connection = null;
    }
}
