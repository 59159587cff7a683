using System.Text;
using P11Proxy.Wire;
using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.UnitTests.Wire;

/// <summary>Builders for attributes, values and messages shared by the wire tests.</summary>
internal static class W
{
    public static readonly WireProfile[] Profiles = [WireProfile.V0, WireProfile.V1, WireProfile.V2];

    public static byte[] Ascii(string text) => Encoding.ASCII.GetBytes(text);

    public static byte[] Hex(string hex) => Convert.FromHexString(hex.Replace(" ", "", StringComparison.Ordinal));

    public static string ToHex(ReadOnlySpan<byte> bytes) => Convert.ToHexStringLower(bytes);

    public static WireAttribute Byte(ulong type, byte value, uint length = 1) =>
        new() { Type = type, Valid = true, Length = length, Kind = AttributeValueKind.Byte, Scalar = value };

    public static WireAttribute ULong(ulong type, ulong value, uint length = 8) =>
        new() { Type = type, Valid = true, Length = length, Kind = AttributeValueKind.ULong, Scalar = value };

    public static WireAttribute Bytes(ulong type, byte[] value) =>
        new() { Type = type, Valid = true, Length = (uint)value.Length, Kind = AttributeValueKind.ByteArray, Bytes = WireBytes.Of(value) };

    /// <summary>A byte-array attribute whose pValue was NULL (a size answer: length only).</summary>
    public static WireAttribute NullBytes(ulong type, uint length) =>
        new() { Type = type, Valid = true, Length = length, Kind = AttributeValueKind.ByteArray, Bytes = WireBytes.Null };

    public static WireAttribute Unavailable(WireProfile profile, ulong type) =>
        new() { Type = type, Valid = false, Kind = profile.KindOf(type) };

    /// <summary>A date: 8 bytes YYYYMMDD, or null for the empty date (always sent as a NULL array).</summary>
    public static WireAttribute Date(ulong type, string? yyyymmdd) => yyyymmdd is null
        ? new() { Type = type, Valid = true, Length = 0, Kind = AttributeValueKind.Date, Bytes = WireBytes.Null }
        : new() { Type = type, Valid = true, Length = 8, Kind = AttributeValueKind.Date, Bytes = WireBytes.Of(Ascii(yyyymmdd)) };

    public static WireAttribute Mechanisms(ulong type, params ulong[] mechanisms) =>
        new() { Type = type, Valid = true, Length = (uint)mechanisms.Length * 8, Kind = AttributeValueKind.MechanismTypeArray, Mechanisms = mechanisms };

    public static WireAttribute Template(ulong type, params WireAttribute[] nested) =>
        new() { Type = type, Valid = true, Length = (uint)(nested.Length * AttributeCodec.NativeAttributeSize), Kind = AttributeValueKind.AttributeArray, Nested = nested };

    /// <summary>A template nested <paramref name="depth"/> levels deep (depth 1: one template holding a flat attribute).</summary>
    public static WireAttribute DeepTemplate(int depth)
    {
        var inner = ULong(CKA_CLASS, CKO_SECRET_KEY);
        for (int i = 0; i < depth; i++)
            inner = Template(i % 2 == 0 ? CKA_WRAP_TEMPLATE : CKA_UNWRAP_TEMPLATE, inner);
        return inner;
    }

    /// <summary>One attribute of every kind the profile knows (CKA_DERIVE_TEMPLATE's kind depends on it).</summary>
    public static WireAttribute[] EveryKind(WireProfile profile)
    {
        var list = new List<WireAttribute>
        {
            ULong(CKA_CLASS, CKO_SECRET_KEY),
            ULong(CKA_KEY_TYPE, 0),
            ULong(CKA_VALUE_LEN, ulong.MaxValue),
            Byte(CKA_TOKEN, 1),
            Byte(CKA_PRIVATE, 0),
            Bytes(CKA_LABEL, Ascii("golden label")),
            Bytes(CKA_ID, []),
            NullBytes(CKA_VALUE, 256),
            Unavailable(profile, CKA_VALUE),
            Unavailable(profile, CKA_WRAP_TEMPLATE),
            Unavailable(profile, CKA_TOKEN),
            Date(CKA_START_DATE, "20240131"),
            Date(CKA_END_DATE, null),
            Mechanisms(CKA_ALLOWED_MECHANISMS, CKM_AES_CBC, CKM_AES_GCM, 0x80000001UL),
            Mechanisms(CKA_ALLOWED_MECHANISMS),
            Template(CKA_WRAP_TEMPLATE, ULong(CKA_CLASS, CKO_SECRET_KEY), Byte(CKA_EXTRACTABLE, 0)),
            Template(CKA_UNWRAP_TEMPLATE),
            Bytes(0x80001234UL, [1, 2, 3]), // vendor attribute: byte array
        };
        list.Add(profile.KindOf(CKA_DERIVE_TEMPLATE) == AttributeValueKind.AttributeArray
            ? Template(CKA_DERIVE_TEMPLATE, Bytes(CKA_LABEL, Ascii("derived")))
            : Bytes(CKA_DERIVE_TEMPLATE, [9, 9, 9]));
        return list.ToArray();
    }

    public static WireAttributeBuffer Buffer(ulong type, uint length, params WireAttributeBuffer[]? nested) =>
        new() { Type = type, Length = length, Nested = nested };

    /// <summary>Buffers of a C_GetAttributeValue request; templates nest only for peers that nest them.</summary>
    public static WireAttributeBuffer[] SomeBuffers(WireProfile? profile = null) =>
    [
        Buffer(CKA_CLASS, 8, null),
        Buffer(CKA_LABEL, 0, null),
        Buffer(CKA_VALUE, 4096, null),
        profile is { NestedAttributeBuffers: false }
            ? Buffer(CKA_WRAP_TEMPLATE, 48, null)
            : Buffer(CKA_WRAP_TEMPLATE, 48, Buffer(CKA_CLASS, 8, null), Buffer(CKA_UNWRAP_TEMPLATE, 24, Buffer(CKA_TOKEN, 1, null))),
        Buffer(CKA_UNWRAP_TEMPLATE, 0, null),
    ];

    /// <summary>A mechanism every profile can carry, with a structured parameter.</summary>
    public static WireMechanism MechanismFor(WireProfile profile, int variant) => (profile.Version, variant % 3) switch
    {
        (_, 0) => new WireMechanism(CKM_RSA_PKCS_PSS, new RsaPssParameter(CKM_SHA256, CKG_MGF1_SHA256, 32)),
        (_, 1) => new WireMechanism(CKM_SHA256_RSA_PKCS, null),
        (0, _) => new WireMechanism(CKM_RSA_PKCS_OAEP, new RsaOaepParameter(CKM_SHA_1, CKG_MGF1_SHA1, 1, WireBytes.Of(Ascii("label")))),
        (1, _) => new WireMechanism(CKM_AES_CBC_PAD, new RawParameter(new byte[16])),
        _ => new WireMechanism(CKM_AES_GCM, new GcmParameter(WireBytes.Of(new byte[12]), 96, WireBytes.Of(Ascii("aad")), 128)),
    };

    public static byte[] SpaceString(int width, string text) => Ascii(text.PadRight(width));

    /// <summary>Synthetic values for every part of a signature.</summary>
    public static List<object?> SampleValues(RpcCall call, MessageKind kind, WireProfile profile, int variant)
    {
        var values = new List<object?>();
        if (call.Id == RpcCallId.Error)
            return [variant == 0 ? CKR_PIN_INCORRECT : ulong.MaxValue];
        var parts = call.PartsFor(kind, call.TypedFor(profile));
        for (int i = 0; i < parts.Length; i++)
        {
            int v = variant + i;
            values.Add(parts[i] switch
            {
                WireType.Byte => (byte)(v % 2 == 0 ? 0 : 0xff),
                WireType.ULong => (v % 3) switch { 0 => 0UL, 1 => 0x0102030405060708UL, _ => ulong.MaxValue },
                WireType.ZeroString => v % 2 == 0 ? Ascii("zero string") : Array.Empty<byte>(),
                WireType.SpaceString => SpaceString(WireValues.SpaceStringWidth(call.Id, kind, i), "space string " + i),
                WireType.Version => new WireVersion((byte)(2 + v % 2), 40),
                WireType.ByteArray => (v % 4) switch
                {
                    0 => WireByteArray.Of(Ascii("some bytes")),
                    1 => WireByteArray.LengthOnly(4096),
                    2 => WireByteArray.NullArray,
                    _ => WireByteArray.Of(Array.Empty<byte>()),
                },
                WireType.ByteBuffer => v % 2 == 0 ? 0u : 0xffffffffu,
                WireType.ULongArray => v % 2 == 0 ? WireULongArray.Of(1, 0, ulong.MaxValue) : WireULongArray.CountOnly(7),
                WireType.ULongBuffer => (uint)(v % 2 == 0 ? 0 : 64),
                WireType.AttributeArray => v % 2 == 0 ? EveryKind(profile) : Array.Empty<WireAttribute>(),
                WireType.AttributeBuffer => v % 2 == 0 ? SomeBuffers(profile) : Array.Empty<WireAttributeBuffer>(),
                WireType.Mechanism => call.Id == RpcCallId.C_DeriveKey2
                    ? new WireMechanism(CKM_IBM_KYBER, new IbmKyberParameter(1, CK_IBM_KYBER_KEM_ENCAPSULATE, 0, 0,
                        WireBytes.Null, WireBytes.Of(new byte[] { 1, 2 }), 0))
                    : MechanismFor(profile, v),
                WireType.MechanismUpdate => v % 2 == 0
                    ? new MechanismUpdate(true, (byte)CK_IBM_KYBER_KEM_ENCAPSULATE, true, WireBytes.Of(new byte[] { 5, 6, 7 }), 3)
                    : new MechanismUpdate(true, (byte)CK_IBM_KYBER_KEM_ENCAPSULATE, false, WireBytes.Null, 1568),
                WireType.MessageParameter => (v % 4) switch
                {
                    0 => WireMessageParameter.Gcm(WireBytes.Of(new byte[12]), 32, 2, WireBytes.Of(new byte[16]), 128),
                    1 => WireMessageParameter.Ccm(100, WireBytes.Of(new byte[13]), 0, 0, WireBytes.Of(new byte[8])),
                    2 => WireMessageParameter.SalsaChaChaPoly(WireBytes.Of(new byte[12]), WireBytes.Of(new byte[16])),
                    _ => WireMessageParameter.Absent,
                },
                WireType.MessageParameterUpdate => v % 2 == 0
                    ? new MessageParameterUpdate(WireBytes.Of(new byte[] { 1, 2, 3 }), WireBytes.Null)
                    : MessageParameterUpdate.None,
                _ => throw new InvalidOperationException(),
            });
        }
        return values;
    }

    /// <summary>Encodes values into a body (a copy, without the reserved header).</summary>
    public static byte[] Encode(WireProfile profile, RpcCall call, MessageKind kind, IReadOnlyList<object?> values,
        ulong? mechanismType = null)
    {
        using var writer = new RpcMessageWriter(profile);
        WireValues.Encode(writer, call, kind, values, mechanismType);
        Assert.That(writer.Complete, Is.True, $"{call.Name} {kind}: writer not complete (failed: {writer.Failed})");
        return writer.Writer.Body.ToArray();
    }

    /// <summary>Parses and decodes; asserts both succeed.</summary>
    public static List<object?> Decode(WireProfile profile, byte[] body, MessageKind kind, ulong? mechanismType = null)
    {
        var reader = new RpcMessageReader(profile);
        var status = reader.Parse(body, kind);
        Assert.That(status, Is.EqualTo(ParseStatus.Ok), $"parse of {ToHex(body)}");
        Assert.That(WireValues.TryDecode(reader, kind, out var values, mechanismType), Is.True, $"decode of {ToHex(body)}");
        return values;
    }

    /// <summary>Parse + decode without asserting; true when the message was accepted. Must never throw.</summary>
    public static bool TryParseAndDecode(WireProfile profile, ReadOnlyMemory<byte> body, MessageKind kind, ulong? mechanismType = null)
    {
        var reader = new RpcMessageReader(profile);
        if (reader.Parse(body, kind) != ParseStatus.Ok)
            return false;
        return WireValues.TryDecode(reader, kind, out _, mechanismType ?? CKM_IBM_KYBER);
    }

    public static void AssertValuesEqual(IReadOnlyList<object?> expected, IReadOnlyList<object?> actual, string context)
    {
        Assert.That(actual, Has.Count.EqualTo(expected.Count), context);
        for (int i = 0; i < expected.Count; i++)
            Assert.That(WireValues.ValueEquals(expected[i], actual[i]), Is.True,
                $"{context}: part {i} differs: expected {Show(expected[i])}, got {Show(actual[i])}");
    }

    private static string Show(object? value) => value switch
    {
        WireAttribute[] attributes => WireValues.Describe(CallTable.Get(RpcCallId.C_CreateObject), MessageKind.Request, [0UL, attributes]),
        _ => value?.ToString() ?? "null",
    };

    /// <summary>A hand-built body: call id, signature, then raw bytes.</summary>
    public static byte[] Body(uint callId, string signature, params byte[][] rest)
    {
        var bytes = new List<byte>();
        bytes.AddRange(U32(callId));
        bytes.AddRange(U32((uint)signature.Length));
        bytes.AddRange(Ascii(signature));
        foreach (var part in rest) bytes.AddRange(part);
        return bytes.ToArray();
    }

    public static byte[] U32(uint value) => [(byte)(value >> 24), (byte)(value >> 16), (byte)(value >> 8), (byte)value];

    public static byte[] U64(ulong value) => [.. U32((uint)(value >> 32)), .. U32((uint)value)];
}

/// <summary>The captured p11-kit traffic in tests/Unit/golden.</summary>
internal static class Golden
{
    public sealed record Frame(string File, int Line, MessageKind Kind, byte[] Body)
    {
        public override string ToString() => $"{File}:{Line}";
    }

    public static string Directory024 => Path.Combine(AppContext.BaseDirectory, "golden", "p11kit-0.24.1");

    public static IEnumerable<string> Files024() =>
        System.IO.Directory.Exists(Directory024)
            ? System.IO.Directory.GetFiles(Directory024, "*.txt").Select(Path.GetFileName).Order(StringComparer.Ordinal)!
            : [];

    public static List<Frame> Load(string directory, string file)
    {
        var frames = new List<Frame>();
        int lineNumber = 0;
        foreach (var line in File.ReadLines(Path.Combine(directory, file)))
        {
            lineNumber++;
            if (line.Length < 2 || line[0] == '#')
                continue;
            var kind = line[0] switch
            {
                '>' => MessageKind.Request,
                '<' => MessageKind.Response,
                _ => throw new FormatException($"{file}:{lineNumber}: unexpected line"),
            };
            frames.Add(new Frame(file, lineNumber, kind, Convert.FromHexString(line[2..].Trim())));
        }
        return frames;
    }

    public static List<Frame> All024() => Files024().SelectMany(file => Load(Directory024, file)).ToList();

    public static byte VersionByte(string directory, string file, string who)
    {
        var prefix = $"# {who} version byte: ";
        var line = File.ReadLines(Path.Combine(directory, file)).First(l => l.StartsWith(prefix, StringComparison.Ordinal));
        return byte.Parse(line[prefix.Length..], System.Globalization.CultureInfo.InvariantCulture);
    }
}
