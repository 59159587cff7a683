using System.Collections.Frozen;
using static P11Proxy.Wire.CallTraits;

namespace P11Proxy.Wire;

/// <summary>Call identifiers, in the order of p11-kit's rpc-message.h (the numbers are the wire values).</summary>
public enum RpcCallId : uint
{
    Error = 0,
    C_Initialize, C_Finalize, C_GetInfo, C_GetSlotList, C_GetSlotInfo, C_GetTokenInfo,
    C_GetMechanismList, C_GetMechanismInfo, C_InitToken, C_OpenSession, C_CloseSession,
    C_CloseAllSessions, C_GetSessionInfo, C_InitPIN, C_SetPIN, C_GetOperationState,
    C_SetOperationState, C_Login, C_Logout, C_CreateObject, C_CopyObject, C_DestroyObject,
    C_GetObjectSize, C_GetAttributeValue, C_SetAttributeValue, C_FindObjectsInit, C_FindObjects,
    C_FindObjectsFinal, C_EncryptInit, C_Encrypt, C_EncryptUpdate, C_EncryptFinal, C_DecryptInit,
    C_Decrypt, C_DecryptUpdate, C_DecryptFinal, C_DigestInit, C_Digest, C_DigestUpdate,
    C_DigestKey, C_DigestFinal, C_SignInit, C_Sign, C_SignUpdate, C_SignFinal, C_SignRecoverInit,
    C_SignRecover, C_VerifyInit, C_Verify, C_VerifyUpdate, C_VerifyFinal, C_VerifyRecoverInit,
    C_VerifyRecover, C_DigestEncryptUpdate, C_DecryptDigestUpdate, C_SignEncryptUpdate,
    C_DecryptVerifyUpdate, C_GenerateKey, C_GenerateKeyPair, C_WrapKey, C_UnwrapKey, C_DeriveKey,
    C_SeedRandom, C_GenerateRandom, C_WaitForSlotEvent,
    // PKCS #11 3.0 (protocol version 1)
    C_LoginUser, C_SessionCancel, C_MessageEncryptInit, C_EncryptMessage, C_EncryptMessageBegin,
    C_EncryptMessageNext, C_MessageEncryptFinal, C_MessageDecryptInit, C_DecryptMessage,
    C_DecryptMessageBegin, C_DecryptMessageNext, C_MessageDecryptFinal, C_MessageSignInit,
    C_SignMessage, C_SignMessageBegin, C_SignMessageNext, C_MessageSignFinal, C_MessageVerifyInit,
    C_VerifyMessage, C_VerifyMessageBegin, C_VerifyMessageNext, C_MessageVerifyFinal,
    C_InitToken2,
    // protocol version 2
    C_DeriveKey2,
}

/// <summary>One element of a call signature (p11-kit's letters in brackets).</summary>
public enum WireType : byte
{
    Byte,            // y
    ULong,           // u
    ZeroString,      // z  length-prefixed, NUL not sent
    SpaceString,     // s  fixed-width, space padded
    Version,         // v  two bytes
    ByteArray,       // ay present flag, then bytes or only a length
    ByteBuffer,      // fy the caller's output buffer size (0: size query)
    ULongArray,      // au present flag, count, then 64-bit values
    ULongBuffer,     // fu the caller's output array size
    AttributeArray,  // aA attributes with values
    AttributeBuffer, // fA attribute types and buffer sizes (C_GetAttributeValue request)
    Mechanism,       // M
    MechanismUpdate, // P  mechanism parameter written back by the module (C_DeriveKey2)
    // p11proxy's own, only after the broker announced typed message parameters (see Capabilities):
    MessageParameter,       // T  a per-message parameter by value (MessageParameterCodec)
    MessageParameterUpdate, // U  what the module wrote into it
}

/// <summary>Per-call facts beyond the signatures, read by the module, the broker, tracing and tests.</summary>
[Flags]
public enum CallTraits
{
    None = 0,

    /// <summary>
    /// Quick by nature (no token work, no person): the broker's reader runs it itself until timed
    /// otherwise, and does not look for overlapping requests after it (see the broker's CallDurations).
    /// </summary>
    Quick = 1,

    /// <summary>May block for as long as it likes (a slot event): always run beside the reader, never timed out by the module.</summary>
    Blocking = 2,

    /// <summary>Uses no earlier session: after the broker was lost the module may reconnect for it.</summary>
    MayReconnect = 4,

    /// <summary>A PKCS#11 3.0 function: the broker answers CKR_FUNCTION_NOT_SUPPORTED for a 2.x backend.</summary>
    Needs30Backend = 8,
}

/// <summary>One row of the call table: the single source of truth for both directions.</summary>
public sealed class RpcCall
{
    internal RpcCall(RpcCallId id, string request, string response, byte minVersion, (string Request, string Response)? typed = null,
        CallTraits traits = CallTraits.None, int[]? secret = null, int[]? requestWidths = null, int[]? responseWidths = null)
        : this(id, CallShapes.Own, request, response, minVersion, typed, traits, secret, requestWidths, responseWidths) { }

    /// <summary>A row of a shared shape: its signatures are the shape's.</summary>
    internal RpcCall(RpcCallId id, CallShape shape, byte minVersion, (string Request, string Response)? typed = null,
        CallTraits traits = CallTraits.None, int[]? secret = null)
        : this(id, shape, shape.Request, shape.Response, minVersion, typed, traits, secret, null, null) { }

    private RpcCall(RpcCallId id, CallShape shape, string request, string response, byte minVersion, (string Request, string Response)? typed,
        CallTraits traits, int[]? secret, int[]? requestWidths, int[]? responseWidths)
    {
        Shape = shape;
        Traits = traits;
        SecretRequestParts = secret ?? [];
        _requestWidths = Widths(request, requestWidths);
        _responseWidths = Widths(response, responseWidths);
        Id = id;
        Name = id.ToString();
        RequestSignature = request;
        ResponseSignature = response;
        Request = Signature.Parse(request);
        Response = Signature.Parse(response);
        _requestAscii = System.Text.Encoding.ASCII.GetBytes(request);
        _responseAscii = System.Text.Encoding.ASCII.GetBytes(response);
        MinProtocolVersion = minVersion;
        if (typed is { } t)
        {
            TypedRequestSignature = t.Request;
            TypedResponseSignature = t.Response;
            _typedRequest = Signature.Parse(t.Request);
            _typedResponse = Signature.Parse(t.Response);
            _typedRequestAscii = System.Text.Encoding.ASCII.GetBytes(t.Request);
            _typedResponseAscii = System.Text.Encoding.ASCII.GetBytes(t.Response);
        }
    }

    // The signatures as they travel (ASCII bytes), written and compared once per message.
    private readonly byte[] _requestAscii;
    private readonly byte[] _responseAscii;
    private readonly WireType[]? _typedRequest;
    private readonly WireType[]? _typedResponse;
    private readonly byte[]? _typedRequestAscii;
    private readonly byte[]? _typedResponseAscii;

    /// <summary>
    /// The signatures of the call's typed form (a message-based call whose per-message parameter
    /// travels by value, 'T', with what the module wrote into it coming back, 'U'), or null: used
    /// only with a broker that announced <see cref="Capabilities.TypedMessageParameters"/>. They
    /// differ from p11-kit's, so a p11-kit peer handed one by mistake refuses the message (its
    /// parser compares signatures) instead of reading the parameter as raw bytes.
    /// </summary>
    public string? TypedRequestSignature { get; }
    public string? TypedResponseSignature { get; }
    public bool HasTypedForm => _typedRequest is not null;

    public RpcCallId Id { get; }
    public string Name { get; }
    public string RequestSignature { get; }
    public string ResponseSignature { get; }
    public WireType[] Request { get; }
    public WireType[] Response { get; }

    /// <summary>Lowest negotiated protocol version in which a peer knows this call.</summary>
    public byte MinProtocolVersion { get; }

    public string SignatureFor(MessageKind kind) => kind == MessageKind.Request ? RequestSignature : ResponseSignature;
    public ReadOnlySpan<byte> SignatureBytesFor(MessageKind kind) => kind == MessageKind.Request ? _requestAscii : _responseAscii;
    public WireType[] PartsFor(MessageKind kind) => kind == MessageKind.Request ? Request : Response;

    /// <summary>The signature of the typed form when <paramref name="typed"/> and the call has one, else p11-kit's.</summary>
    public ReadOnlySpan<byte> SignatureBytesFor(MessageKind kind, bool typed) =>
        typed && _typedRequest is not null
            ? (kind == MessageKind.Request ? _typedRequestAscii : _typedResponseAscii)
            : SignatureBytesFor(kind);

    public WireType[] PartsFor(MessageKind kind, bool typed) =>
        typed && _typedRequest is not null
            ? (kind == MessageKind.Request ? _typedRequest : _typedResponse!)
            : PartsFor(kind);

    /// <summary>Whether a message of this call to or from a peer of <paramref name="profile"/> is written in the typed form.</summary>
    public bool TypedFor(WireProfile profile) => profile.TypedMessageParameters && _typedRequest is not null;

    /// <summary>The shape the call shares with others (its two sides are Remote.&lt;Shape&gt; and Dispatcher.&lt;Shape&gt;), or <see cref="CallShapes.Own"/>.</summary>
    public CallShape Shape { get; }

    public CallTraits Traits { get; }
    public bool Quick => (Traits & CallTraits.Quick) != 0;
    public bool Blocking => (Traits & CallTraits.Blocking) != 0;
    public bool MayReconnect => (Traits & CallTraits.MayReconnect) != 0;
    public bool Needs30Backend => (Traits & CallTraits.Needs30Backend) != 0;

    /// <summary>The module waits for the reply without its timeout (a call that may block).</summary>
    public bool NoTimeout => Blocking;

    /// <summary>Request parts holding a PIN: scrubbed from the module's buffers after the call, redacted in traces.</summary>
    public int[] SecretRequestParts { get; }
    public bool HasSecret => SecretRequestParts.Length != 0;
    public bool IsSecret(MessageKind kind, int partIndex) => kind == MessageKind.Request && Array.IndexOf(SecretRequestParts, partIndex) >= 0;

    private readonly int[] _requestWidths;
    private readonly int[] _responseWidths;

    /// <summary>Width of a fixed-size space-padded part ('s'), from the C structure it fills; 0 for other parts.</summary>
    public int WidthOf(MessageKind kind, int partIndex)
    {
        var widths = kind == MessageKind.Request ? _requestWidths : _responseWidths;
        return (uint)partIndex < (uint)widths.Length ? widths[partIndex] : 0;
    }

    /// <summary>Per-part widths from the widths of the 's' parts in signature order.</summary>
    private static int[] Widths(string signature, int[]? spaceWidths)
    {
        var parts = Signature.Parse(signature);
        var widths = new int[parts.Length];
        int next = 0;
        for (int i = 0; i < parts.Length; i++)
        {
            if (parts[i] != WireType.SpaceString) continue;
            if (spaceWidths is null || next >= spaceWidths.Length)
                throw new ArgumentException($"signature '{signature}': no width for space string part {i}");
            widths[i] = spaceWidths[next++];
        }
        if (spaceWidths is not null && next != spaceWidths.Length)
            throw new ArgumentException($"signature '{signature}': {spaceWidths.Length} widths for {next} space strings");
        return widths;
    }

    public override string ToString() => Name;
}

public enum MessageKind { Request = 1, Response = 2 }

/// <summary>Parses p11-kit signature strings ("uayfy") into <see cref="WireType"/> sequences.</summary>
public static class Signature
{
    public static WireType[] Parse(string signature)
    {
        var parts = new List<WireType>();
        for (int i = 0; i < signature.Length; i++)
        {
            char c = signature[i];
            if (c == 'a' || c == 'f')
            {
                if (i + 1 >= signature.Length)
                    throw new FormatException($"signature '{signature}' ends after '{c}'");
                char element = signature[++i];
                parts.Add((c, element) switch
                {
                    ('a', 'y') => WireType.ByteArray,
                    ('f', 'y') => WireType.ByteBuffer,
                    ('a', 'u') => WireType.ULongArray,
                    ('f', 'u') => WireType.ULongBuffer,
                    ('a', 'A') => WireType.AttributeArray,
                    ('f', 'A') => WireType.AttributeBuffer,
                    _ => throw new FormatException($"unknown signature element '{c}{element}' in '{signature}'"),
                });
                continue;
            }
            parts.Add(c switch
            {
                'y' => WireType.Byte,
                'u' => WireType.ULong,
                'z' => WireType.ZeroString,
                's' => WireType.SpaceString,
                'v' => WireType.Version,
                'M' => WireType.Mechanism,
                'P' => WireType.MechanismUpdate,
                'T' => WireType.MessageParameter,
                'U' => WireType.MessageParameterUpdate,
                _ => throw new FormatException($"unknown signature element '{c}' in '{signature}'"),
            });
        }
        return parts.ToArray();
    }

    public static string Format(ReadOnlySpan<WireType> parts)
    {
        var text = new System.Text.StringBuilder();
        foreach (var part in parts)
            text.Append(part switch
            {
                WireType.Byte => "y", WireType.ULong => "u", WireType.ZeroString => "z",
                WireType.SpaceString => "s", WireType.Version => "v", WireType.ByteArray => "ay",
                WireType.ByteBuffer => "fy", WireType.ULongArray => "au", WireType.ULongBuffer => "fu",
                WireType.AttributeArray => "aA", WireType.AttributeBuffer => "fA", WireType.Mechanism => "M",
                WireType.MechanismUpdate => "P", WireType.MessageParameter => "T",
                WireType.MessageParameterUpdate => "U", _ => "?",
            });
        return text.ToString();
    }
}

/// <summary>
/// The call table of p11-kit 0.26 (rpc-message.h): request and response signature of every call,
/// and the protocol version that introduced it. Module and broker both encode and decode from it.
/// </summary>
public static class CallTable
{
    /// <summary>The handshake string sent in C_Initialize.</summary>
    public static ReadOnlySpan<byte> Handshake => "PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"u8;

    private static readonly RpcCall[] Calls =
    [
        new(RpcCallId.Error, "", "u", 0),
        new(RpcCallId.C_Initialize, "ayyay", "", 0, traits: Quick),
        new(RpcCallId.C_Finalize, "", "", 0, traits: Quick),
        new(RpcCallId.C_GetInfo, "", "vsusv", 0, traits: Quick | MayReconnect, responseWidths: [32, 32]),
        new(RpcCallId.C_GetSlotList, "yfu", "au", 0, traits: Quick | MayReconnect),
        new(RpcCallId.C_GetSlotInfo, "u", "ssuvv", 0, traits: Quick | MayReconnect, responseWidths: [64, 32]),
        new(RpcCallId.C_GetTokenInfo, "u", "ssssuuuuuuuuuuuvvs", 0, traits: Quick | MayReconnect, responseWidths: [32, 32, 16, 16, 16]),
        new(RpcCallId.C_GetMechanismList, "ufu", "au", 0, traits: Quick | MayReconnect),
        new(RpcCallId.C_GetMechanismInfo, "uu", "uuu", 0, traits: Quick | MayReconnect),
        new(RpcCallId.C_InitToken, "uayz", "", 0, secret: [1]),
        new(RpcCallId.C_OpenSession, "uu", "u", 0, traits: Quick | MayReconnect),
        new(RpcCallId.C_CloseSession, "u", "", 0, traits: Quick),
        new(RpcCallId.C_CloseAllSessions, "u", "", 0),
        new(RpcCallId.C_GetSessionInfo, "u", "uuuu", 0, traits: Quick),
        new(RpcCallId.C_InitPIN, CallShapes.Data, 0, secret: [1]),
        new(RpcCallId.C_SetPIN, CallShapes.DataData, 0, secret: [1, 2]),
        new(RpcCallId.C_GetOperationState, CallShapes.ToData, 0),
        new(RpcCallId.C_SetOperationState, "uayuu", "", 0),
        new(RpcCallId.C_Login, "uuay", "", 0, secret: [2]),
        new(RpcCallId.C_Logout, CallShapes.Session, 0, traits: Quick),
        new(RpcCallId.C_CreateObject, "uaA", "u", 0),
        new(RpcCallId.C_CopyObject, "uuaA", "u", 0),
        new(RpcCallId.C_DestroyObject, CallShapes.SessionHandle, 0, traits: Quick),
        new(RpcCallId.C_GetObjectSize, "uu", "u", 0, traits: Quick),
        new(RpcCallId.C_GetAttributeValue, "uufA", "aAu", 0, traits: Quick),
        new(RpcCallId.C_SetAttributeValue, "uuaA", "", 0, traits: Quick),
        new(RpcCallId.C_FindObjectsInit, "uaA", "", 0, traits: Quick),
        new(RpcCallId.C_FindObjects, "ufu", "au", 0, traits: Quick),
        new(RpcCallId.C_FindObjectsFinal, CallShapes.Session, 0, traits: Quick),
        new(RpcCallId.C_EncryptInit, CallShapes.Init, 0),
        new(RpcCallId.C_Encrypt, CallShapes.DataToData, 0),
        new(RpcCallId.C_EncryptUpdate, CallShapes.DataToData, 0),
        new(RpcCallId.C_EncryptFinal, CallShapes.ToData, 0),
        new(RpcCallId.C_DecryptInit, CallShapes.Init, 0),
        new(RpcCallId.C_Decrypt, CallShapes.DataToData, 0),
        new(RpcCallId.C_DecryptUpdate, CallShapes.DataToData, 0),
        new(RpcCallId.C_DecryptFinal, CallShapes.ToData, 0),
        new(RpcCallId.C_DigestInit, "uM", "", 0),
        new(RpcCallId.C_Digest, CallShapes.DataToData, 0),
        new(RpcCallId.C_DigestUpdate, CallShapes.Data, 0),
        new(RpcCallId.C_DigestKey, CallShapes.SessionHandle, 0),
        new(RpcCallId.C_DigestFinal, CallShapes.ToData, 0),
        new(RpcCallId.C_SignInit, CallShapes.Init, 0),
        new(RpcCallId.C_Sign, CallShapes.DataToData, 0),
        new(RpcCallId.C_SignUpdate, CallShapes.Data, 0),
        new(RpcCallId.C_SignFinal, CallShapes.ToData, 0),
        new(RpcCallId.C_SignRecoverInit, CallShapes.Init, 0),
        new(RpcCallId.C_SignRecover, CallShapes.DataToData, 0),
        new(RpcCallId.C_VerifyInit, CallShapes.Init, 0),
        new(RpcCallId.C_Verify, CallShapes.DataData, 0),
        new(RpcCallId.C_VerifyUpdate, CallShapes.Data, 0),
        new(RpcCallId.C_VerifyFinal, CallShapes.Data, 0),
        new(RpcCallId.C_VerifyRecoverInit, CallShapes.Init, 0),
        new(RpcCallId.C_VerifyRecover, CallShapes.DataToData, 0),
        new(RpcCallId.C_DigestEncryptUpdate, CallShapes.DataToData, 0),
        new(RpcCallId.C_DecryptDigestUpdate, CallShapes.DataToData, 0),
        new(RpcCallId.C_SignEncryptUpdate, CallShapes.DataToData, 0),
        new(RpcCallId.C_DecryptVerifyUpdate, CallShapes.DataToData, 0),
        new(RpcCallId.C_GenerateKey, "uMaA", "u", 0),
        new(RpcCallId.C_GenerateKeyPair, "uMaAaA", "uu", 0),
        new(RpcCallId.C_WrapKey, "uMuufy", "ay", 0),
        new(RpcCallId.C_UnwrapKey, "uMuayaA", "u", 0),
        new(RpcCallId.C_DeriveKey, "uMuaA", "u", 0),
        new(RpcCallId.C_SeedRandom, CallShapes.Data, 0, traits: Quick),
        new(RpcCallId.C_GenerateRandom, "ufy", "ay", 0, traits: Quick),
        new(RpcCallId.C_WaitForSlotEvent, "u", "u", 0, traits: Blocking),
        new(RpcCallId.C_LoginUser, "uuayay", "", 1, traits: Needs30Backend, secret: [2]),
        new(RpcCallId.C_SessionCancel, "uu", "", 1, traits: Needs30Backend),
        new(RpcCallId.C_MessageEncryptInit, "uMu", "", 1, traits: Needs30Backend),
        // The typed forms answer the CK_RV in the reply itself ('u' first), so that what the module
        // wrote into the parameter comes back whatever the outcome, as it would be in the caller's memory.
        new(RpcCallId.C_EncryptMessage, "uayayayfy", "ay", 1, typed: ("uTayayfy", "uUay"), traits: Needs30Backend),
        new(RpcCallId.C_EncryptMessageBegin, "uayay", "", 1, typed: ("uTay", "uU"), traits: Needs30Backend),
        new(RpcCallId.C_EncryptMessageNext, "uayayfyu", "ay", 1, typed: ("uTayfyu", "uUay"), traits: Needs30Backend),
        new(RpcCallId.C_MessageEncryptFinal, "u", "", 1, traits: Needs30Backend),
        new(RpcCallId.C_MessageDecryptInit, "uMu", "", 1, traits: Needs30Backend),
        new(RpcCallId.C_DecryptMessage, "uayayayfy", "ay", 1, typed: ("uTayayfy", "uUay"), traits: Needs30Backend),
        new(RpcCallId.C_DecryptMessageBegin, "uayay", "", 1, typed: ("uTay", "uU"), traits: Needs30Backend),
        new(RpcCallId.C_DecryptMessageNext, "uayayfyu", "ay", 1, typed: ("uTayfyu", "uUay"), traits: Needs30Backend),
        new(RpcCallId.C_MessageDecryptFinal, "u", "", 1, traits: Needs30Backend),
        new(RpcCallId.C_MessageSignInit, CallShapes.Init, 1, traits: Needs30Backend),
        new(RpcCallId.C_SignMessage, "uayayfy", "ay", 1, traits: Needs30Backend),
        new(RpcCallId.C_SignMessageBegin, "uay", "", 1, traits: Needs30Backend),
        new(RpcCallId.C_SignMessageNext, "uayayyfy", "ay", 1, traits: Needs30Backend),
        new(RpcCallId.C_MessageSignFinal, CallShapes.Session, 1, traits: Needs30Backend),
        new(RpcCallId.C_MessageVerifyInit, CallShapes.Init, 1, traits: Needs30Backend),
        new(RpcCallId.C_VerifyMessage, "uayayay", "", 1, traits: Needs30Backend),
        new(RpcCallId.C_VerifyMessageBegin, "uay", "", 1, traits: Needs30Backend),
        new(RpcCallId.C_VerifyMessageNext, "uayayay", "", 1, traits: Needs30Backend),
        new(RpcCallId.C_MessageVerifyFinal, CallShapes.Session, 1, traits: Needs30Backend),
        new(RpcCallId.C_InitToken2, "uays", "", 1, secret: [1], requestWidths: [32]),
        new(RpcCallId.C_DeriveKey2, "uMuaA", "uPu", 2),
    ];

    private static readonly FrozenDictionary<string, RpcCall> ByName =
        Calls.ToFrozenDictionary(call => call.Name, StringComparer.Ordinal);

    /// <summary>Number of call ids including ERROR (p11-kit's P11_RPC_CALL_MAX).</summary>
    public static int Count => Calls.Length;

    public static IReadOnlyList<RpcCall> All => Calls;

    public static RpcCall Get(RpcCallId id) => Calls[(int)id];

    public static bool TryGet(uint id, out RpcCall call)
    {
        if (id < (uint)Calls.Length)
        {
            call = Calls[id];
            return true;
        }
        call = null!;
        return false;
    }

    public static bool TryGetByName(string name, out RpcCall call) => ByName.TryGetValue(name, out call!);
}
