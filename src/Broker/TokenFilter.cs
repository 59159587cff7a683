using System.Text;
using P11Proxy.Pkcs11;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Broker;

/// <summary>
/// Which tokens clients may see, from PKCS#11 URIs (RFC 7512). A slot is visible when any URI
/// matches it; with no URI every slot is. Hidden slots are refused like unknown ones.
/// </summary>
internal sealed unsafe class TokenFilter
{
    private static readonly string[] Known =
    [
        "token", "manufacturer", "serial", "model", "library-manufacturer", "library-description",
        "library-version", "slot-description", "slot-manufacturer", "slot-id",
    ];

    private readonly List<Dictionary<string, string>> _uris = new();

    public bool FiltersAnything => _uris.Count > 0;

    /// <summary>Each URI's attributes, decoded (name to value).</summary>
    public IReadOnlyList<IReadOnlyDictionary<string, string>> Uris => _uris;

    private bool _needsSlot, _needsToken, _needsLibrary;

    public IReadOnlyList<string> Descriptions { get; private set; } = [];

    /// <summary>Parses the URIs; throws <see cref="BrokerException"/> naming what is wrong.</summary>
    public static TokenFilter Parse(IEnumerable<string> uris, string option = "--token")
    {
        var filter = new TokenFilter();
        var descriptions = new List<string>();
        foreach (var uri in uris)
        {
            if (!uri.StartsWith("pkcs11:", StringComparison.Ordinal))
                throw new BrokerException($"{option} '{uri}' is not a PKCS#11 URI (it must start with 'pkcs11:')");
            string path = uri["pkcs11:".Length..];
            int query = path.IndexOf('?');
            if (query >= 0) path = path[..query];
            var attributes = new Dictionary<string, string>(StringComparer.Ordinal);
            foreach (var part in path.Split(';', StringSplitOptions.RemoveEmptyEntries))
            {
                int equals = part.IndexOf('=');
                if (equals <= 0)
                    throw new BrokerException($"{option} '{uri}': '{part}' is not name=value");
                string name = part[..equals];
                if (!Known.Contains(name))
                    throw new BrokerException($"{option} '{uri}': attribute '{name}' does not select tokens (use one of: {string.Join(", ", Known)})");
                attributes[name] = Decode(part[(equals + 1)..], uri, option);
            }
            filter._uris.Add(attributes);
            descriptions.Add(uri);
        }
        filter.Descriptions = descriptions;
        foreach (var uri in filter._uris)
            foreach (var name in uri.Keys)
            {
                if (name.StartsWith("slot-", StringComparison.Ordinal)) filter._needsSlot = true;
                else if (name.StartsWith("library-", StringComparison.Ordinal)) filter._needsLibrary = true;
                else filter._needsToken = true;
            }
        return filter;
    }

    private static string Decode(string value, string uri, string option)
    {
        var bytes = new List<byte>();
        var utf8 = Encoding.UTF8.GetBytes(value);
        for (int i = 0; i < utf8.Length; i++)
        {
            if (utf8[i] != '%')
            {
                bytes.Add(utf8[i]);
                continue;
            }
            if (i + 2 >= utf8.Length || !byte.TryParse(Encoding.ASCII.GetString(utf8, i + 1, 2), System.Globalization.NumberStyles.HexNumber, null, out byte b))
                throw new BrokerException($"{option} '{uri}': bad percent-encoding in '{value}'");
            bytes.Add(b);
            i += 2;
        }
        return Encoding.UTF8.GetString(bytes.ToArray());
    }

    private CK_INFO _library;
    private bool _libraryKnown;

    /// <summary>
    /// Whether a slot's token may be seen. Only what the URIs ask about is fetched (the library
    /// information once); a caller that already holds the token information passes it in.
    /// </summary>
    public bool IsVisible(CK_FUNCTION_LIST_3_0* functions, nuint slot, CK_TOKEN_INFO* knownToken = null)
    {
        if (_uris.Count == 0)
            return true;
        CK_SLOT_INFO slotInfo = default;
        if (_needsSlot && functions->C_GetSlotInfo(slot, &slotInfo) != (nuint)CKR_OK)
            return false;
        CK_TOKEN_INFO tokenInfo = default;
        CK_TOKEN_INFO* token = knownToken;
        if (token == null && _needsToken)
        {
            if (functions->C_GetTokenInfo(slot, &tokenInfo) == (nuint)CKR_OK)
                token = &tokenInfo;
        }
        if (_needsLibrary && !_libraryKnown)
        {
            CK_INFO library = default;
            functions->C_GetInfo(&library);
            _library = library;
            _libraryKnown = true;
        }
        var libraryInfo = _library;
        foreach (var uri in _uris)
            if (Matches(uri, slot, &slotInfo, token, &libraryInfo))
                return true;
        return false;
    }

    private static bool Matches(Dictionary<string, string> uri, nuint slot, CK_SLOT_INFO* slotInfo, CK_TOKEN_INFO* token, CK_INFO* library)
    {
        foreach (var (name, wanted) in uri)
        {
            string? actual = name switch
            {
                "token" => token == null ? null : Padded(token->label, 32),
                "manufacturer" => token == null ? null : Padded(token->manufacturerID, 32),
                "serial" => token == null ? null : Padded(token->serialNumber, 16),
                "model" => token == null ? null : Padded(token->model, 16),
                "library-manufacturer" => Padded(library->manufacturerID, 32),
                "library-description" => Padded(library->libraryDescription, 32),
                "library-version" => $"{library->libraryVersion.major}.{library->libraryVersion.minor}",
                "slot-description" => Padded(slotInfo->slotDescription, 64),
                "slot-manufacturer" => Padded(slotInfo->manufacturerID, 32),
                "slot-id" => slot.ToString(),
                _ => null,
            };
            if (actual is null || actual != wanted)
                return false;
        }
        return true;
    }

    /// <summary>A space-padded CK_TOKEN_INFO / CK_SLOT_INFO field as text.</summary>
    internal static string Padded(byte* field, int width) =>
        Encoding.UTF8.GetString(new ReadOnlySpan<byte>(field, width)).TrimEnd(' ', '\0');

    /// <summary>The backend's slot list with hidden slots removed.</summary>
    public nuint[] VisibleSlots(CK_FUNCTION_LIST_3_0* functions, byte tokenPresent, out ulong rv) =>
        BackendSlots(functions, tokenPresent, out rv).Where(slot => IsVisible(functions, slot)).ToArray();

    /// <summary>
    /// The backend's whole slot list (size query, then fill): the one copy of that two-step call
    /// for the broker's own use (this filter, held PINs, token waits). Empty, with
    /// <paramref name="rv"/>, on error.
    /// </summary>
    internal static nuint[] BackendSlots(CK_FUNCTION_LIST_3_0* functions, byte tokenPresent, out ulong rv)
    {
        nuint count = 0;
        rv = functions->C_GetSlotList(tokenPresent, null, &count);
        if (rv != CKR_OK) return [];
        var slots = new nuint[count];
        fixed (nuint* list = slots)
        {
            rv = functions->C_GetSlotList(tokenPresent, count == 0 ? null : list, &count);
        }
        if (rv != CKR_OK) return [];
        return count == (nuint)slots.Length ? slots : slots.AsSpan(0, (int)count).ToArray();
    }
}
