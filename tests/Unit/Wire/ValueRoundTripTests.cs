using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Wire;

/// <summary>
/// Every value type, byte-exact against encodings worked out by hand from p11-kit's rpc-message.c
/// (big-endian; CK_ULONG as 64 bits; byte arrays as a 32-bit length, 0xffffffff for NULL; 'ay' and
/// 'au' with a leading present byte; attributes as type, validity, length, value), and
/// encode → decode equality for all.
/// </summary>
[TestFixture]
public class ValueRoundTripTests
{
    private static readonly WireProfile[] Profiles = W.Profiles;

    private static string Hex(byte[] body, int skipSignature) => W.ToHex(body.AsSpan(8 + skipSignature));

    private static List<object?> RoundTrip(WireProfile profile, RpcCallId id, MessageKind kind, List<object?> values, string expectedHexAfterSignature)
    {
        var call = CallTable.Get(id);
        var body = W.Encode(profile, call, kind, values);
        Assert.That(Hex(body, call.SignatureFor(kind).Length), Is.EqualTo(expectedHexAfterSignature.Replace(" ", "", StringComparison.Ordinal)));
        var decoded = W.Decode(profile, body, kind);
        W.AssertValuesEqual(values, decoded, id.ToString());
        return decoded;
    }

    [Test]
    public void LoginRequestIsByteExact()
    {
        var call = CallTable.Get(RpcCallId.C_Login);
        var body = W.Encode(WireProfile.V0, call, MessageKind.Request, [1UL, CKU_USER, WireByteArray.Of(W.Ascii("1234"))]);
        Assert.That(W.ToHex(body), Is.EqualTo(
            "00000012" + "00000004" + "75756179" + "0000000000000001" + "0000000000000001" + "01" + "00000004" + "31323334"));
    }

    [TestCase(0UL, "0000000000000000")]
    [TestCase(1UL, "0000000000000001")]
    [TestCase(0x8000000000000000UL, "8000000000000000")]
    [TestCase(ulong.MaxValue, "ffffffffffffffff")]
    public void ULong(ulong value, string hex) =>
        RoundTrip(WireProfile.V0, RpcCallId.C_CloseSession, MessageKind.Request, [value], hex);

    [TestCase((byte)0, "00")]
    [TestCase((byte)1, "01")]
    [TestCase((byte)0xff, "ff")]
    public void Byte(byte value, string hex) =>
        RoundTrip(WireProfile.V0, RpcCallId.C_GetSlotList, MessageKind.Request, [value, 0u], hex + "00000000");

    [Test]
    public void ZeroString()
    {
        RoundTrip(WireProfile.V0, RpcCallId.C_InitToken, MessageKind.Request,
            [0UL, WireByteArray.Of(W.Ascii("so")), W.Ascii("label")],
            "0000000000000000 01 00000002 736f 00000005 6c6162656c");
        RoundTrip(WireProfile.V0, RpcCallId.C_InitToken, MessageKind.Request,
            [0UL, WireByteArray.Of(Array.Empty<byte>()), Array.Empty<byte>()], "0000000000000000 01 00000000 00000000");
    }

    [Test]
    public void SpaceStringsAndVersions()
    {
        var manufacturer = W.SpaceString(32, "p11proxy");
        var description = W.SpaceString(32, "");
        RoundTrip(WireProfile.V0, RpcCallId.C_GetInfo, MessageKind.Response,
            [new WireVersion(3, 0), manufacturer, 0UL, description, new WireVersion(0, 255)],
            "03 00 00000020" + W.ToHex(manufacturer) + "0000000000000000 00000020" + W.ToHex(description) + "00 ff");
    }

    [Test]
    public void SpaceStringOfTheWrongWidthIsRefused()
    {
        var call = CallTable.Get(RpcCallId.C_InitToken2);
        using var writer = new RpcMessageWriter(WireProfile.V1);
        writer.Begin(call, MessageKind.Request);
        writer.WriteULong(1);
        writer.WriteByteArray(W.Ascii("so"));
        writer.WriteSpaceString(W.SpaceString(31, "label")); // one byte short
        var reader = new RpcMessageReader(WireProfile.V1);
        Assert.That(reader.Parse(writer.Writer.Body.ToArray(), MessageKind.Request), Is.EqualTo(ParseStatus.Ok));
        Assert.That(WireValues.TryDecode(reader, MessageKind.Request, out _), Is.False);
    }

    public static IEnumerable<TestCaseData> ByteArrays()
    {
        yield return new TestCaseData(WireByteArray.Of(W.Ascii("abc")), "01 00000003 616263").SetName("ByteArray(present)");
        yield return new TestCaseData(WireByteArray.Of(Array.Empty<byte>()), "01 00000000").SetName("ByteArray(empty)");
        yield return new TestCaseData(WireByteArray.NullArray, "01 ffffffff").SetName("ByteArray(NULL)");
        yield return new TestCaseData(WireByteArray.LengthOnly(256), "00 00000100").SetName("ByteArray(absent, length 256)");
        yield return new TestCaseData(WireByteArray.LengthOnly(0), "00 00000000").SetName("ByteArray(absent, length 0)");
        yield return new TestCaseData(WireByteArray.LengthOnly(0xffffffff), "00 ffffffff").SetName("ByteArray(absent, length max)");
    }

    [TestCaseSource(nameof(ByteArrays))]
    public void ByteArray(WireByteArray array, string hex) =>
        RoundTrip(WireProfile.V0, RpcCallId.C_Sign, MessageKind.Response, [array], hex);

    [Test]
    public void LargeByteArrayRoundTrips()
    {
        var data = new byte[1 << 20];
        new Random(1).NextBytes(data);
        var call = CallTable.Get(RpcCallId.C_DigestUpdate);
        var values = new List<object?> { 5UL, WireByteArray.Of(data) };
        W.AssertValuesEqual(values, W.Decode(WireProfile.V2, W.Encode(WireProfile.V2, call, MessageKind.Request, values), MessageKind.Request), "1 MiB");
    }

    [TestCase(0u, "00000000")]
    [TestCase(20u, "00000014")]
    [TestCase(0xffffffffu, "ffffffff")]
    public void ByteBuffer(uint capacity, string hex) =>
        RoundTrip(WireProfile.V0, RpcCallId.C_GenerateRandom, MessageKind.Request, [3UL, capacity], "0000000000000003" + hex);

    [Test]
    public void ULongArrays()
    {
        RoundTrip(WireProfile.V0, RpcCallId.C_GetSlotList, MessageKind.Response, [WireULongArray.Of(1, ulong.MaxValue)],
            "01 00000002 0000000000000001 ffffffffffffffff");
        RoundTrip(WireProfile.V0, RpcCallId.C_GetSlotList, MessageKind.Response, [WireULongArray.Of()], "01 00000000");
        RoundTrip(WireProfile.V0, RpcCallId.C_GetSlotList, MessageKind.Response, [WireULongArray.CountOnly(3)], "00 00000003");
        RoundTrip(WireProfile.V0, RpcCallId.C_GetMechanismList, MessageKind.Request, [0UL, 64u], "0000000000000000 00000040");
    }

    // Attribute encodings: type (32 bits), validity byte, then length (32 bits) and the value.
    public static IEnumerable<TestCaseData> Attributes()
    {
        yield return Case("Byte", W.Byte(CKA_TOKEN, 1), "00000001 01 00000001 01");
        yield return Case("ByteLength0", W.Byte(CKA_TOKEN, 0, 0), "00000001 01 00000000 00");
        yield return Case("ULong", W.ULong(CKA_CLASS, CKO_PRIVATE_KEY), "00000000 01 00000008 0000000000000003");
        yield return Case("ULongMax", W.ULong(CKA_VALUE_LEN, ulong.MaxValue), "00000161 01 00000008 ffffffffffffffff");
        yield return Case("Unavailable", W.Unavailable(WireProfile.V0, CKA_VALUE), "00000011 00");
        yield return Case("UnavailableTemplate", W.Unavailable(WireProfile.V2, CKA_WRAP_TEMPLATE), "40000211 00");
        yield return Case("Bytes", W.Bytes(CKA_LABEL, W.Ascii("rk")), "00000003 01 00000002 00000002 726b");
        yield return Case("BytesEmpty", W.Bytes(CKA_ID, []), "00000102 01 00000000 00000000");
        yield return Case("BytesNull", W.NullBytes(CKA_MODULUS, 256), "00000120 01 00000100 ffffffff");
        yield return Case("DateEmpty", W.Date(CKA_START_DATE, null), "00000110 01 00000000 ffffffff");
        yield return Case("Date", W.Date(CKA_END_DATE, "20991231"), "00000111 01 00000008 00000008 3230393931323331");
        yield return Case("Mechanisms", W.Mechanisms(CKA_ALLOWED_MECHANISMS, CKM_RSA_PKCS, CKM_AES_GCM),
            "40000600 01 00000010 00000002 0000000000000001 0000000000001087");
        yield return Case("MechanismsEmpty", W.Mechanisms(CKA_ALLOWED_MECHANISMS), "40000600 01 00000000 00000000");
        yield return Case("TemplateEmpty", W.Template(CKA_UNWRAP_TEMPLATE), "40000212 01 00000000 00000000");
        yield return Case("Template", W.Template(CKA_WRAP_TEMPLATE, W.ULong(CKA_CLASS, CKO_SECRET_KEY), W.Byte(CKA_TOKEN, 0)),
            "40000211 01 00000030 00000002 00000000 01 00000008 0000000000000004 00000001 01 00000001 00");
        yield return Case("VendorBytes", W.Bytes(0x80000001, [0xaa]), "80000001 01 00000001 00000001 aa");

        static TestCaseData Case(string name, WireAttribute attribute, string hex) =>
            new TestCaseData(attribute, hex).SetName($"Attribute({name})");
    }

    [TestCaseSource(nameof(Attributes))]
    public void Attribute(WireAttribute attribute, string hex) =>
        RoundTrip(WireProfile.V2, RpcCallId.C_FindObjectsInit, MessageKind.Request, [9UL, new[] { attribute }],
            "0000000000000009 00000001 " + hex);

    [TestCaseSource(nameof(Profiles))]
    public void AttributesOfEveryKindRoundTrip(WireProfile profile)
    {
        var call = CallTable.Get(RpcCallId.C_GetAttributeValue);
        var values = new List<object?> { W.EveryKind(profile), CKR_ATTRIBUTE_SENSITIVE };
        var body = W.Encode(profile, call, MessageKind.Response, values);
        W.AssertValuesEqual(values, W.Decode(profile, body, MessageKind.Response), $"V{profile.Version}");
    }

    [Test]
    public void DeriveTemplateIsAByteArrayInVersion0()
    {
        // A p11-kit 0.24 peer sends CKA_DERIVE_TEMPLATE as plain bytes (it did not know the attribute).
        var body = W.Body((uint)RpcCallId.C_FindObjectsInit, "uaA", W.U64(1), W.U32(1),
            W.Hex("40000213 01 00000003 00000003 010203"));
        var attribute = ((WireAttribute[])W.Decode(WireProfile.V0, body, MessageKind.Request)[1]!)[0];
        Assert.That(attribute.Kind, Is.EqualTo(AttributeValueKind.ByteArray));
        Assert.That(attribute.Bytes.Data.ToArray(), Is.EqualTo(new byte[] { 1, 2, 3 }));
        // The same bytes are malformed for a version 2 peer (a template of 3 attributes is not there).
        Assert.That(W.TryParseAndDecode(WireProfile.V2, body, MessageKind.Request), Is.False);
    }

    [TestCase(1)]
    [TestCase(2)]
    [TestCase(3)]
    [TestCase(4)]
    [TestCase(5)]
    [TestCase(6)]
    [TestCase(7)]
    [TestCase(8)]
    public void NestedTemplatesRoundTrip(int depth)
    {
        var call = CallTable.Get(RpcCallId.C_CreateObject);
        var values = new List<object?> { 1UL, new[] { W.DeepTemplate(depth), W.Byte(CKA_TOKEN, 1) } };
        var body = W.Encode(WireProfile.V2, call, MessageKind.Request, values);
        W.AssertValuesEqual(values, W.Decode(WireProfile.V2, body, MessageKind.Request), $"depth {depth}");
    }

    [TestCase(9)]
    [TestCase(12)]
    public void TemplatesNestedDeeperThanP11KitAllowsAreRefused(int depth)
    {
        var call = CallTable.Get(RpcCallId.C_CreateObject);
        using var writer = new RpcMessageWriter(WireProfile.V2);
        WireValues.Encode(writer, call, MessageKind.Request, [1UL, new[] { W.DeepTemplate(depth) }]);
        Assert.That(W.TryParseAndDecode(WireProfile.V2, writer.Writer.Body.ToArray(), MessageKind.Request), Is.False);
    }

    [Test]
    public void AttributeBuffersRoundTrip()
    {
        RoundTrip(WireProfile.V2, RpcCallId.C_GetAttributeValue, MessageKind.Request,
            [1UL, 2UL, new[] { W.Buffer(CKA_CLASS, 8, null), W.Buffer(CKA_VALUE, 0x10000, null), W.Buffer(CKA_LABEL, 0, null) }],
            "0000000000000001 0000000000000002 00000003 00000000 00000008 00000011 00010000 00000003 00000000");
        // A template with a buffer carries its nested entries (p11-kit 0.25.4 and later).
        RoundTrip(WireProfile.V2, RpcCallId.C_GetAttributeValue, MessageKind.Request,
            [1UL, 2UL, new[] { W.Buffer(CKA_WRAP_TEMPLATE, 24, W.Buffer(CKA_CLASS, 8, null)), W.Buffer(CKA_UNWRAP_TEMPLATE, 0, null) }],
            "0000000000000001 0000000000000002 00000002 40000211 00000018 00000001 00000000 00000008 40000212 00000000");
        var values = new List<object?> { 1UL, 2UL, W.SomeBuffers() };
        var call = CallTable.Get(RpcCallId.C_GetAttributeValue);
        W.AssertValuesEqual(values, W.Decode(WireProfile.V2, W.Encode(WireProfile.V2, call, MessageKind.Request, values), MessageKind.Request), "nested");
    }

    [TestCase(1)]
    [TestCase(8)]
    public void NestedAttributeBuffersRoundTrip(int depth)
    {
        var entry = W.Buffer(CKA_CLASS, 8, null);
        for (int i = 0; i < depth; i++)
            entry = W.Buffer(CKA_WRAP_TEMPLATE, 24, entry);
        var values = new List<object?> { 1UL, 2UL, new[] { entry } };
        var call = CallTable.Get(RpcCallId.C_GetAttributeValue);
        W.AssertValuesEqual(values, W.Decode(WireProfile.V2, W.Encode(WireProfile.V2, call, MessageKind.Request, values), MessageKind.Request), $"depth {depth}");
    }

    [Test]
    public void AttributeBufferBudgetIsEnforced()
    {
        var call = CallTable.Get(RpcCallId.C_GetAttributeValue);
        var body = W.Encode(WireProfile.V2, call, MessageKind.Request,
            [1UL, 2UL, new[] { W.Buffer(CKA_VALUE, 0x7fffffff, null), W.Buffer(CKA_LABEL, 0x7fffffff, null) }]);
        var reader = new RpcMessageReader(WireProfile.V2);
        Assert.That(reader.Parse(body, MessageKind.Request), Is.EqualTo(ParseStatus.Ok));
        Assert.That(WireValues.TryDecode(reader, MessageKind.Request, out _, maxAttributeBufferBytes: 1 << 20), Is.False);
        Assert.That(reader.Parse(body, MessageKind.Request), Is.EqualTo(ParseStatus.Ok));
        Assert.That(WireValues.TryDecode(reader, MessageKind.Request, out _, maxAttributeBufferBytes: 0x100000000L), Is.True);
    }

    [Test]
    public void MechanismTypeArraysOfTheCallTableRoundTrip()
    {
        var mechanisms = Enumerable.Range(0, 300).Select(i => (ulong)i * 0x11).ToArray();
        var call = CallTable.Get(RpcCallId.C_GetMechanismList);
        var values = new List<object?> { WireULongArray.Of(mechanisms) };
        W.AssertValuesEqual(values, W.Decode(WireProfile.V0, W.Encode(WireProfile.V0, call, MessageKind.Response, values), MessageKind.Response), "list");
    }

    [Test]
    public void TrailingBytesAreRefused()
    {
        var call = CallTable.Get(RpcCallId.C_CloseSession);
        var body = W.Encode(WireProfile.V0, call, MessageKind.Request, [1UL]);
        Assert.That(W.TryParseAndDecode(WireProfile.V0, body, MessageKind.Request), Is.True);
        Assert.That(W.TryParseAndDecode(WireProfile.V0, (byte[])[.. body, 0], MessageKind.Request), Is.False);
    }
}
