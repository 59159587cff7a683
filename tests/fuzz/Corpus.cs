using System.Buffers.Binary;
using System.Text;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Fuzz;

/// <summary>One seed input: a request body, and for the frame-level specials a lying header.</summary>
public sealed record SeedInput(string Name, byte[] Body, FrameSpec? Frame = null);

/// <summary>What the corpus knows about the token being fuzzed (real handles make deeper calls reachable).</summary>
public sealed record TokenFacts(ulong Slot, ulong[] Objects);

/// <summary>
/// The corpus, built in memory at start: the request bodies of the captured p11-kit traffic, a
/// synthetic request for every call of the call table in each protocol version, and hostile
/// special inputs. Session arguments carry <see cref="SessionMarker"/>, which the driver replaces
/// with the session it opened on the connection just before sending.
/// </summary>
public static class Corpus
{
    /// <summary>Eight bytes replaced by the connection's own session handle at send time.</summary>
    public const ulong SessionMarker = 0x5E55_1011_5E55_1011;

    public static readonly byte[] SessionMarkerBytes = U64(SessionMarker);

    /// <summary>Calls whose first argument is a slot id rather than a session.</summary>
    private static bool SlotFirst(RpcCallId id) => id is RpcCallId.C_GetSlotInfo or RpcCallId.C_GetTokenInfo
        or RpcCallId.C_GetMechanismList or RpcCallId.C_GetMechanismInfo or RpcCallId.C_InitToken
        or RpcCallId.C_OpenSession or RpcCallId.C_CloseAllSessions or RpcCallId.C_InitToken2;

    public static List<SeedInput>[] Build(string? goldenDirectory, TokenFacts facts, out int goldenCount)
    {
        var perVersion = new List<SeedInput>[3];
        var golden = LoadGolden(goldenDirectory, facts);
        goldenCount = golden.Count;
        for (byte version = 0; version < 3; version++)
        {
            var profile = WireProfile.For(version);
            var list = new List<SeedInput>(golden);
            foreach (var call in CallTable.All)
            {
                if (call.Id == RpcCallId.Error) continue;
                for (int variant = 0; variant < 4; variant++)
                {
                    var body = Synthetic(profile, call, variant, facts);
                    if (body is not null)
                        list.Add(new SeedInput($"v{version} {call.Name} #{variant}", body));
                }
            }
            list.AddRange(Specials(profile, facts));
            perVersion[version] = Dedupe(list);
        }
        return perVersion;
    }

    private static List<SeedInput> Dedupe(List<SeedInput> inputs)
    {
        var seen = new HashSet<string>();
        var result = new List<SeedInput>();
        foreach (var input in inputs)
            if (seen.Add(Convert.ToHexString(input.Body) + "|" + input.Frame))
                result.Add(input);
        return result;
    }

    // ---- golden traffic --------------------------------------------------------------------------------

    /// <summary>Every '>' line of the captured files, as captured and with its session/slot argument made live.</summary>
    private static List<SeedInput> LoadGolden(string? directory, TokenFacts facts)
    {
        var result = new List<SeedInput>();
        if (directory is null || !Directory.Exists(directory))
            return result;
        foreach (var file in Directory.GetFiles(directory, "*.txt", SearchOption.AllDirectories).Order(StringComparer.Ordinal))
        {
            int lineNumber = 0;
            foreach (var line in File.ReadLines(file))
            {
                lineNumber++;
                if (!line.StartsWith("> ", StringComparison.Ordinal))
                    continue;
                var body = Convert.FromHexString(line[2..].Trim());
                string name = $"{Path.GetFileName(file)}:{lineNumber}";
                result.Add(new SeedInput(name, body));
                var live = MakeLive(body, facts);
                if (live is not null)
                    result.Add(new SeedInput(name + " live", live));
            }
        }
        return result;
    }

    /// <summary>Re-encodes a captured version-0 request with this token's slot or the marker session.</summary>
    private static byte[]? MakeLive(byte[] body, TokenFacts facts)
    {
        var reader = new RpcMessageReader(WireProfile.V0);
        if (reader.Parse(body, MessageKind.Request) != ParseStatus.Ok ||
            !WireValues.TryDecode(reader, MessageKind.Request, out var values))
            return null;
        var call = reader.Call!;
        if (values.Count == 0 || values[0] is not ulong)
            return null;
        values[0] = SlotFirst(call.Id) ? facts.Slot : SessionMarker;
        // Live copies make session objects only: token objects would pile up in the token over a long run.
        for (int i = 1; i < values.Count; i++)
            if (values[i] is WireAttribute[] template)
                values[i] = template.Select(a => a.Type == CKA_TOKEN && a.Valid && a.Kind == AttributeValueKind.Byte
                    ? new WireAttribute { Type = a.Type, Valid = true, Length = a.Length, Kind = a.Kind, Scalar = 0 } : a).ToArray();
        using var writer = new RpcMessageWriter(WireProfile.V0);
        WireValues.Encode(writer, call, MessageKind.Request, values);
        return writer.Complete ? writer.Writer.Body.ToArray() : null;
    }

    // ---- synthetic requests for every call ------------------------------------------------------------

    private static byte[] Ascii(string text) => Encoding.ASCII.GetBytes(text);

    private static WireAttribute ULongAttr(ulong type, ulong value) =>
        new() { Type = type, Valid = true, Length = 8, Kind = AttributeValueKind.ULong, Scalar = value };

    private static WireAttribute ByteAttr(ulong type, byte value) =>
        new() { Type = type, Valid = true, Length = 1, Kind = AttributeValueKind.Byte, Scalar = value };

    private static WireAttribute BytesAttr(ulong type, byte[] value) =>
        new() { Type = type, Valid = true, Length = (uint)value.Length, Kind = AttributeValueKind.ByteArray, Bytes = WireBytes.Of(value) };

    private static WireAttribute NullBytesAttr(ulong type, uint length) =>
        new() { Type = type, Valid = true, Length = length, Kind = AttributeValueKind.ByteArray, Bytes = WireBytes.Null };

    private static WireAttribute TemplateAttr(ulong type, params WireAttribute[] nested) =>
        new() { Type = type, Valid = true, Length = (uint)(nested.Length * AttributeCodec.NativeAttributeSize), Kind = AttributeValueKind.AttributeArray, Nested = nested };

    /// <summary>Templates: one of every value kind, and ones SoftHSM accepts (session objects only, small keys).</summary>
    private static WireAttribute[] Template(WireProfile profile, RpcCallId call, int v)
    {
        switch (v % 4)
        {
            case 0:
            {
                var list = new List<WireAttribute>
                {
                    ULongAttr(CKA_CLASS, CKO_SECRET_KEY), ULongAttr(CKA_KEY_TYPE, 0), ULongAttr(CKA_VALUE_LEN, ulong.MaxValue),
                    ByteAttr(CKA_TOKEN, 0), ByteAttr(CKA_PRIVATE, 0), BytesAttr(CKA_LABEL, Ascii("fuzz label")),
                    BytesAttr(CKA_ID, []), NullBytesAttr(CKA_VALUE, 256),
                    new() { Type = CKA_VALUE, Valid = false, Kind = profile.KindOf(CKA_VALUE) },
                    new() { Type = CKA_WRAP_TEMPLATE, Valid = false, Kind = profile.KindOf(CKA_WRAP_TEMPLATE) },
                    new() { Type = CKA_START_DATE, Valid = true, Length = 8, Kind = AttributeValueKind.Date, Bytes = WireBytes.Of(Ascii("20240131")) },
                    new() { Type = CKA_END_DATE, Valid = true, Length = 0, Kind = AttributeValueKind.Date, Bytes = WireBytes.Null },
                    new() { Type = CKA_ALLOWED_MECHANISMS, Valid = true, Length = 24, Kind = AttributeValueKind.MechanismTypeArray, Mechanisms = [CKM_AES_CBC, CKM_AES_GCM, 0x80000001UL] },
                    TemplateAttr(CKA_WRAP_TEMPLATE, ULongAttr(CKA_CLASS, CKO_SECRET_KEY), ByteAttr(CKA_EXTRACTABLE, 0)),
                    TemplateAttr(CKA_UNWRAP_TEMPLATE),
                    BytesAttr(0x80001234UL, [1, 2, 3]),
                };
                list.Add(profile.KindOf(CKA_DERIVE_TEMPLATE) == AttributeValueKind.AttributeArray
                    ? TemplateAttr(CKA_DERIVE_TEMPLATE, BytesAttr(CKA_LABEL, Ascii("derived")))
                    : BytesAttr(CKA_DERIVE_TEMPLATE, [9, 9, 9]));
                return list.ToArray();
            }
            case 1:
                return [];
            case 2:
                return call switch
                {
                    RpcCallId.C_GenerateKeyPair =>
                    [
                        ByteAttr(CKA_TOKEN, 0), ULongAttr(CKA_MODULUS_BITS, 1024), BytesAttr(CKA_PUBLIC_EXPONENT, [1, 0, 1]),
                        ByteAttr(CKA_VERIFY, 1), ByteAttr(CKA_ENCRYPT, 1),
                    ],
                    RpcCallId.C_GenerateKey or RpcCallId.C_UnwrapKey or RpcCallId.C_DeriveKey or RpcCallId.C_DeriveKey2 =>
                    [
                        ULongAttr(CKA_CLASS, CKO_SECRET_KEY), ULongAttr(CKA_KEY_TYPE, CKK_AES), ULongAttr(CKA_VALUE_LEN, 32),
                        ByteAttr(CKA_TOKEN, 0), ByteAttr(CKA_ENCRYPT, 1), ByteAttr(CKA_DECRYPT, 1),
                    ],
                    RpcCallId.C_FindObjectsInit => [ULongAttr(CKA_CLASS, CKO_PRIVATE_KEY)],
                    _ =>
                    [
                        ULongAttr(CKA_CLASS, CKO_DATA), ByteAttr(CKA_TOKEN, 0), BytesAttr(CKA_LABEL, Ascii("fuzz data")),
                        BytesAttr(CKA_VALUE, Ascii("fuzz value")),
                    ],
                };
            default:
                return [ByteAttr(CKA_TOKEN, 0), BytesAttr(CKA_LABEL, Ascii("x")), ByteAttr(CKA_SIGN, 1), ByteAttr(CKA_PRIVATE, 1)];
        }
    }

    private static WireAttributeBuffer Buffer(ulong type, uint length, params WireAttributeBuffer[]? nested) =>
        new() { Type = type, Length = length, Nested = nested };

    private static WireAttributeBuffer[] Buffers(WireProfile profile, int v) => (v % 3) switch
    {
        0 =>
        [
            Buffer(CKA_CLASS, 8, null), Buffer(CKA_LABEL, 0, null), Buffer(CKA_VALUE, 4096, null),
            profile.NestedAttributeBuffers
                ? Buffer(CKA_WRAP_TEMPLATE, 48, Buffer(CKA_CLASS, 8, null), Buffer(CKA_UNWRAP_TEMPLATE, 24, Buffer(CKA_TOKEN, 1, null)))
                : Buffer(CKA_WRAP_TEMPLATE, 48, null),
            Buffer(CKA_UNWRAP_TEMPLATE, 0, null),
        ],
        1 => [],
        _ => [Buffer(CKA_LABEL, 0, null), Buffer(CKA_ID, 0, null), Buffer(CKA_MODULUS, 0, null), Buffer(CKA_KEY_TYPE, 8, null)],
    };

    /// <summary>Mechanisms to try in order; the first the profile can carry is used.</summary>
    private static IEnumerable<WireMechanism> Mechanisms(RpcCallId call, int v)
    {
        if (call == RpcCallId.C_DeriveKey2)
        {
            yield return new WireMechanism(CKM_IBM_KYBER, new IbmKyberParameter(1, CK_IBM_KYBER_KEM_ENCAPSULATE, 0, 0,
                WireBytes.Null, WireBytes.Of(new byte[] { 1, 2 }), 0));
            yield break;
        }
        if (call == RpcCallId.C_GenerateKeyPair)
        {
            yield return new WireMechanism(v % 2 == 0 ? CKM_RSA_PKCS_KEY_PAIR_GEN : CKM_EC_KEY_PAIR_GEN, null);
            yield break;
        }
        if (call == RpcCallId.C_GenerateKey)
        {
            yield return new WireMechanism(CKM_AES_KEY_GEN, null);
            yield break;
        }
        switch (v % 6)
        {
            case 0: yield return new WireMechanism(CKM_RSA_PKCS_PSS, new RsaPssParameter(CKM_SHA256, CKG_MGF1_SHA256, 32)); break;
            case 1: yield return new WireMechanism(CKM_SHA256_RSA_PKCS, null); break;
            case 2: yield return new WireMechanism(CKM_RSA_PKCS_OAEP, new RsaOaepParameter(CKM_SHA_1, CKG_MGF1_SHA1, 1, WireBytes.Of(Ascii("label")))); break;
            case 3: yield return new WireMechanism(CKM_AES_GCM, new GcmParameter(WireBytes.Of(new byte[12]), 96, WireBytes.Of(Ascii("aad")), 128)); break;
            case 4: yield return new WireMechanism(CKM_AES_CBC_PAD, new RawParameter(new byte[16])); break;
            default: yield return new WireMechanism(CKM_ECDH1_DERIVE, new Ecdh1DeriveParameter(CKD_NULL, WireBytes.Null, WireBytes.Of(new byte[65]))); break;
        }
        yield return new WireMechanism(CKM_RSA_PKCS, null);
        yield return new WireMechanism(CKM_SHA256, null);
    }

    private static object Value(WireType part, RpcCall call, int index, int variant, WireProfile profile, TokenFacts facts,
        WireMechanism mechanism)
    {
        int v = variant + index;
        return part switch
        {
            WireType.Byte => (byte)(v % 3 switch { 0 => 0, 1 => 1, _ => 0xff }),
            WireType.ULong when index == 0 && call.Id == RpcCallId.C_WaitForSlotEvent => variant % 2 == 0 ? (ulong)CKF_DONT_BLOCK : 0UL,
            WireType.ULong when index == 0 => variant == 3
                ? (variant + (int)call.Id) % 2 == 0 ? ulong.MaxValue : 0UL
                : SlotFirst(call.Id) ? facts.Slot : SessionMarker,
            WireType.ULong when call.Id == RpcCallId.C_OpenSession => variant % 2 == 0 ? CKF_SERIAL_SESSION | CKF_RW_SESSION : CKF_SERIAL_SESSION,
            WireType.ULong when call.Id is RpcCallId.C_Login or RpcCallId.C_LoginUser && index == 1 => (ulong)(variant % 3),
            WireType.ULong => facts.Objects.Length > 0 && v % 4 != 3
                ? facts.Objects[v % facts.Objects.Length]
                : (v % 3) switch { 0 => 0UL, 1 => 0x0102030405060708UL, _ => ulong.MaxValue },
            WireType.ZeroString => v % 2 == 0 ? Ascii("fuzz label") : Array.Empty<byte>(),
            WireType.SpaceString => Ascii(("space string " + index).PadRight(WireValues.SpaceStringWidth(call.Id, MessageKind.Request, index))),
            WireType.Version => new WireVersion((byte)(2 + v % 2), 40),
            WireType.ByteArray => (v % 6) switch
            {
                0 => WireByteArray.Of(Ascii("some bytes")),
                1 => WireByteArray.LengthOnly(4096),
                2 => WireByteArray.NullArray,
                3 => WireByteArray.Of(Array.Empty<byte>()),
                4 => WireByteArray.Of(Enumerable.Repeat((byte)0x5a, 32).ToArray()),
                _ => WireByteArray.Of(Enumerable.Repeat((byte)0xa5, 256).ToArray()),
            },
            WireType.ByteBuffer => (v % 4) switch { 0 => 0u, 1 => 0xffffffffu, 2 => 512u, _ => 1u },
            WireType.ULongArray => v % 2 == 0 ? WireULongArray.Of(1, 0, ulong.MaxValue) : WireULongArray.CountOnly(7),
            WireType.ULongBuffer => (uint)(v % 3 switch { 0 => 0, 1 => 64, _ => 1 }),
            WireType.AttributeArray => Template(profile, call.Id, v),
            WireType.AttributeBuffer => Buffers(profile, v),
            WireType.Mechanism => mechanism,
            _ => throw new InvalidOperationException($"{call.Name}: no sample for {part}"),
        };
    }

    /// <summary>A request for <paramref name="call"/> with values that reach the backend; null if none encodes.</summary>
    public static byte[]? Synthetic(WireProfile profile, RpcCall call, int variant, TokenFacts facts)
    {
        foreach (var mechanism in Mechanisms(call.Id, variant))
        {
            var parts = call.Request;
            var values = new object?[parts.Length];
            for (int i = 0; i < parts.Length; i++)
                values[i] = Value(parts[i], call, i, variant, profile, facts, mechanism);
            using var writer = new RpcMessageWriter(profile);
            WireValues.Encode(writer, call, MessageKind.Request, values);
            if (writer.Complete)
                return writer.Writer.Body.ToArray();
        }
        return null;
    }

    // ---- special inputs ----------------------------------------------------------------------------------

    public static byte[] U32(uint value)
    {
        var bytes = new byte[4];
        BinaryPrimitives.WriteUInt32BigEndian(bytes, value);
        return bytes;
    }

    public static byte[] U64(ulong value)
    {
        var bytes = new byte[8];
        BinaryPrimitives.WriteUInt64BigEndian(bytes, value);
        return bytes;
    }

    /// <summary>Call id, signature as a byte array, then raw parts.</summary>
    private static byte[] Raw(uint callId, string signature, params byte[][] rest)
    {
        var body = new List<byte>();
        body.AddRange(U32(callId));
        body.AddRange(U32((uint)signature.Length));
        body.AddRange(Ascii(signature));
        foreach (var part in rest) body.AddRange(part);
        return body.ToArray();
    }

    private static byte[] Cat(params byte[][] parts) => parts.SelectMany(p => p).ToArray();

    /// <summary>An 'aA' of one template nested <paramref name="depth"/> levels around CKA_CLASS.</summary>
    private static byte[] NestedAttributes(int depth)
    {
        var stream = new MemoryStream(depth * 13 + 32);
        stream.Write(U32(1));
        for (int i = 0; i < depth; i++)
        {
            stream.Write(U32((uint)(i % 2 == 0 ? CKA_WRAP_TEMPLATE : CKA_UNWRAP_TEMPLATE)));
            stream.WriteByte(1);
            stream.Write(U32(AttributeCodec.NativeAttributeSize));
            stream.Write(U32(1));
        }
        stream.Write(U32((uint)CKA_CLASS));
        stream.WriteByte(1);
        stream.Write(U32(8));
        stream.Write(U64(CKO_SECRET_KEY));
        return stream.ToArray();
    }

    /// <summary>An 'fA' of one template buffer nested <paramref name="depth"/> levels.</summary>
    private static byte[] NestedBuffers(int depth)
    {
        var stream = new MemoryStream(depth * 12 + 32);
        stream.Write(U32(1));
        for (int i = 0; i < depth; i++)
        {
            stream.Write(U32((uint)CKA_WRAP_TEMPLATE));
            stream.Write(U32(AttributeCodec.NativeAttributeSize));
            stream.Write(U32(1));
        }
        stream.Write(U32((uint)CKA_CLASS));
        stream.Write(U32(8));
        return stream.ToArray();
    }

    public static List<SeedInput> Specials(WireProfile profile, TokenFacts facts)
    {
        var s = new List<SeedInput>();
        var session = U64(SessionMarker);
        ulong objectHandle = facts.Objects.Length > 0 ? facts.Objects[0] : 1;

        foreach (int depth in new[] { 1, 2, 7, 8, 9, 16, 100, 1000, 10_000, 100_000 })
        {
            s.Add(new($"nested aA depth {depth}", Raw((uint)RpcCallId.C_CreateObject, "uaA", session, NestedAttributes(depth))));
            s.Add(new($"nested aA depth {depth} in C_FindObjectsInit", Raw((uint)RpcCallId.C_FindObjectsInit, "uaA", session, NestedAttributes(depth))));
            s.Add(new($"nested fA depth {depth}", Raw((uint)RpcCallId.C_GetAttributeValue, "uufA", session, U64(objectHandle), NestedBuffers(depth))));
        }

        foreach (uint big in new uint[] { 0xffffffff, 0xfffffffe, 0x7fffffff, 0x7ffffffe, 0x80000000, 0x10000000 })
        {
            string h = $"0x{big:x}";
            // counts
            s.Add(new($"aA count {h}", Raw((uint)RpcCallId.C_CreateObject, "uaA", session, U32(big))));
            s.Add(new($"aA count {h} with one attribute", Raw((uint)RpcCallId.C_FindObjectsInit, "uaA", session, U32(big), U32((uint)CKA_CLASS), [1], U32(8), U64(CKO_DATA))));
            s.Add(new($"fA count {h}", Raw((uint)RpcCallId.C_GetAttributeValue, "uufA", session, U64(objectHandle), U32(big))));
            s.Add(new($"fu capacity {h}", Raw((uint)RpcCallId.C_GetSlotList, "yfu", [1], U32(big))));
            s.Add(new($"fu capacity {h} (C_FindObjects)", Raw((uint)RpcCallId.C_FindObjects, "ufu", session, U32(big))));
            s.Add(new($"fu capacity {h} (C_GetMechanismList)", Raw((uint)RpcCallId.C_GetMechanismList, "ufu", U64(facts.Slot), U32(big))));
            s.Add(new($"mechanism array count {h}", Raw((uint)RpcCallId.C_CreateObject, "uaA", session, U32(1),
                U32((uint)CKA_ALLOWED_MECHANISMS), [1], U32(16), U32(big), U64(CKM_RSA_PKCS))));
            // lengths
            s.Add(new($"ay length {h}", Raw((uint)RpcCallId.C_DigestUpdate, "uay", session, [1], U32(big), Ascii("abc"))));
            s.Add(new($"ay absent length {h}", Raw((uint)RpcCallId.C_DigestUpdate, "uay", session, [0], U32(big))));
            s.Add(new($"ay absent length {h} (C_Sign)", Raw((uint)RpcCallId.C_Sign, "uayfy", session, [0], U32(big), U32(256))));
            s.Add(new($"fy capacity {h}", Raw((uint)RpcCallId.C_GenerateRandom, "ufy", session, U32(big))));
            s.Add(new($"fy capacity {h} (C_Encrypt)", Raw((uint)RpcCallId.C_Encrypt, "uayfy", session, [1], U32(3), Ascii("abc"), U32(big))));
            s.Add(new($"z length {h}", Raw((uint)RpcCallId.C_InitToken, "uayz", U64(facts.Slot), [1], U32(4), Ascii("0000"), U32(big), Ascii("label"))));
            s.Add(new($"attribute length {h}", Raw((uint)RpcCallId.C_CreateObject, "uaA", session, U32(1), U32((uint)CKA_LABEL), [1], U32(big), U32(3), Ascii("abc"))));
            s.Add(new($"attribute value length {h}", Raw((uint)RpcCallId.C_CreateObject, "uaA", session, U32(1), U32((uint)CKA_LABEL), [1], U32(3), U32(big), Ascii("abc"))));
            s.Add(new($"fA buffer length {h}", Raw((uint)RpcCallId.C_GetAttributeValue, "uufA", session, U64(objectHandle), U32(2),
                U32((uint)CKA_VALUE), U32(big), U32((uint)CKA_LABEL), U32(big))));
            s.Add(new($"mechanism parameter length {h}", Raw((uint)RpcCallId.C_SignInit, "uMu", session, U64(CKM_RSA_PKCS_PSS), [1], U32(big), U64(objectHandle))));
            s.Add(new($"mechanism raw parameter length {h}", Raw((uint)RpcCallId.C_EncryptInit, "uMu", session, U64(CKM_AES_CBC_PAD), U32(big), new byte[16], U64(objectHandle))));
            s.Add(new($"signature length {h}", Cat(U32((uint)RpcCallId.C_GetInfo), U32(big), Ascii(""))));
            s.Add(new($"handshake length {h}", Raw((uint)RpcCallId.C_Initialize, "ayyay", [1], U32(big), CallTable.Handshake.ToArray(), [0], [1], U32(1), [0])));
            s.Add(new($"slot-list count {h}", Raw((uint)RpcCallId.C_WaitForSlotEvent, "u", U64(((ulong)big << 32) | big))));
        }

        // truncated bodies of a well-formed request, at every length
        var good = Synthetic(profile, CallTable.Get(RpcCallId.C_GetAttributeValue), 0, facts)!;
        for (int cut = 0; cut < good.Length; cut += Math.Max(1, good.Length / 24))
            s.Add(new($"C_GetAttributeValue truncated to {cut}", good[..cut]));
        var init = Connection.InitializeBody(profile);
        for (int cut = 0; cut < init.Length; cut += 7)
            s.Add(new($"C_Initialize truncated to {cut}", init[..cut]));
        s.Add(new("trailing byte", [.. Synthetic(profile, CallTable.Get(RpcCallId.C_GetInfo), 0, facts)!, 0]));

        // wrong signatures
        s.Add(new("C_Login with the signature of C_Logout", Raw((uint)RpcCallId.C_Login, "u", session)));
        s.Add(new("C_GetInfo with signature 'u'", Raw((uint)RpcCallId.C_GetInfo, "u", U64(0))));
        s.Add(new("C_GetSlotList with signature 'yfuu'", Raw((uint)RpcCallId.C_GetSlotList, "yfuu", [1], U32(4), U64(0))));
        s.Add(new("C_Sign with response signature", Raw((uint)RpcCallId.C_Sign, "ay", [1], U32(3), Ascii("abc"))));
        s.Add(new("C_Initialize with NULL signature", Cat(U32((uint)RpcCallId.C_Initialize), U32(0xffffffff))));
        s.Add(new("signature with NUL", Raw((uint)RpcCallId.C_GetSlotInfo, "u\0", U64(facts.Slot), [0])));
        s.Add(new("signature with unknown letters", Raw((uint)RpcCallId.C_GetSlotInfo, "Q", U64(facts.Slot))));
        s.Add(new("C_GetSlotInfo with signature 'y'", Raw((uint)RpcCallId.C_GetSlotInfo, "y", [1])));

        // unknown call ids, and ERROR as a request
        foreach (uint id in new uint[] { 90, 91, 0x7fffffff, 0xffffffff, 0x80000000, 255 })
        {
            s.Add(new($"unknown call id 0x{id:x}", Raw(id, "u", U64(0))));
            s.Add(new($"unknown call id 0x{id:x}, no signature", U32(id)));
        }
        s.Add(new("C_DeriveKey2 id with C_DeriveKey signature", Raw((uint)RpcCallId.C_DeriveKey2, "uMuaA", session, U64(CKM_SHA256), U32(0xffffffff), U64(objectHandle), U32(0))));
        s.Add(new("ERROR as a request", Raw(0, "", [])));
        s.Add(new("ERROR as a request with 'u'", Raw(0, "u", U64(CKR_OK))));
        s.Add(new("C_Initialize with a wrong handshake", Raw((uint)RpcCallId.C_Initialize, "ayyay", [1], U32(5), Ascii("HELLO"), [0], [1], U32(1), [0])));
        s.Add(new("C_Initialize with an absent handshake", Raw((uint)RpcCallId.C_Initialize, "ayyay", [0], U32(41), [0], [1], U32(1), [0])));
        s.Add(new("C_Initialize with a NULL reserved string", Raw((uint)RpcCallId.C_Initialize, "ayyay", [1], U32(41), CallTable.Handshake.ToArray(), [1], [1], U32(0xffffffff))));
        s.Add(new("C_Finalize", Raw((uint)RpcCallId.C_Finalize, "")));
        s.Add(new("C_CloseAllSessions", Raw((uint)RpcCallId.C_CloseAllSessions, "u", U64(facts.Slot))));
        s.Add(new("NULL mechanism marker", Raw((uint)RpcCallId.C_DigestInit, "uM", session, U64(0xffffffff))));
        s.Add(new("mechanism type above 32 bits", Raw((uint)RpcCallId.C_DigestInit, "uM", session, U64(0x1_0000_0250), U32(0xffffffff))));

        // frame-level specials: the body is fine, the header is not
        var getInfo = Synthetic(profile, CallTable.Get(RpcCallId.C_GetInfo), 0, facts)!;
        s.Add(new("frame announcing a 3 GB body", getInfo, new FrameSpec { AnnouncedBody = 3_000_000_000u }));
        s.Add(new("frame announcing 0xffffffff bytes", getInfo, new FrameSpec { AnnouncedBody = 0xffffffff }));
        s.Add(new("frame announcing 0x7ffffffe bytes", getInfo, new FrameSpec { AnnouncedBody = 0x7ffffffe }));
        s.Add(new("frame announcing 64 MiB + 1", getInfo, new FrameSpec { AnnouncedBody = (64u << 20) + 1 }));
        s.Add(new("frame announcing 1 MiB, body short, half-closed", getInfo, new FrameSpec { AnnouncedBody = 1u << 20, ShutdownAfterSend = true }));
        s.Add(new("frame announcing one byte more, half-closed", getInfo, new FrameSpec { AnnouncedBody = (uint)getInfo.Length + 1, ShutdownAfterSend = true }));
        s.Add(new("zero-length frame", [], new FrameSpec { AnnouncedBody = 0 }));
        s.Add(new("zero-length frame, code 0", [], new FrameSpec { Code = 0, AnnouncedBody = 0 }));
        s.Add(new("frame code 0", getInfo, new FrameSpec { Code = 0 }));
        s.Add(new("frame code 0xffffffff", getInfo, new FrameSpec { Code = 0xffffffff }));
        s.Add(new("frame with 16 option bytes", getInfo, new FrameSpec { OptionsLength = 16, OptionsSent = 16 }));
        s.Add(new("frame with 4096 option bytes", getInfo, new FrameSpec { OptionsLength = 4096, OptionsSent = 4096 }));
        s.Add(new("frame with 4097 option bytes", getInfo, new FrameSpec { OptionsLength = 4097, OptionsSent = 4097 }));
        s.Add(new("frame with options 0xfffffffe", getInfo, new FrameSpec { OptionsLength = 0xfffffffe }));
        s.Add(new("frame with options 0x7ffffffe", getInfo, new FrameSpec { OptionsLength = 0x7ffffffe }));
        s.Add(new("frame header only, half-closed", [], new FrameSpec { AnnouncedBody = 64, ShutdownAfterSend = true }));
        return s;
    }
}
