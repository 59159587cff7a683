using System.Buffers.Binary;
using P11Proxy.Conformance;

namespace P11Proxy.HostileBroker;

/// <summary>
/// out/p11proxy.so and message parameters, against a fake peer in this process that speaks like
/// p11-kit 0.25 and later (protocol version 2, and nothing more): a parameter holding pointers into
/// the caller's memory is never sent, an absent one travels as NULL.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class MessageParameterModuleTests
{
    private const uint CallInitialize = 1, CallOpenSession = 10, CallMessageEncryptInit = 68, CallEncryptMessage = 69;
    private const ulong CKR_OK = 0, CKR_DEVICE_ERROR = 0x30, CKR_MECHANISM_INVALID = 0x70, CKR_MECHANISM_PARAM_INVALID = 0x71,
        CKR_OPERATION_NOT_INITIALIZED = 0x91, CKM_AES_ECB = 0x1081, CKM_AES_GCM = 0x1087;

    private Module3 _module = null!;
    private FakeBroker? _broker;

    [OneTimeSetUp]
    public void Load()
    {
        NativeEnv.Unset("P11PROXY_PROTOCOL_VERSION");
        _module = Module3.Load(Paths.Module());
        Assert.That(_module.Has30, Is.True, "p11proxy.so offers the 3.0 interface");
    }

    [TearDown]
    public void CleanUp()
    {
        _module.Finalize();
        _broker?.Dispose();
        _broker = null;
        NativeEnv.Unset("P11_KIT_SERVER_ADDRESS");
    }

    /// <summary>
    /// Names the fake broker and has the host load the module again (C_GetInterface): the module
    /// reads its settings once per load, at the next C_Initialize.
    /// </summary>
    private void PointModuleAt(string socketPath)
    {
        NativeEnv.Set("P11_KIT_SERVER_ADDRESS", "unix:path=" + socketPath);
        _module = Module3.Load(Paths.Module());
    }

    private static byte[] Reply(uint call, string signature, Action<Body> values)
    {
        var body = new Body().U32(call).Signature(signature);
        values(body);
        return body.ToArray();
    }

    [Test]
    public void PointerParametersAreNotSentToAPeerWithoutTypedParameters()
    {
        Frame? sent = null;
        _broker = new FakeBroker(c =>
        {
            c.Reply(c.Expect(CallOpenSession), Reply(CallOpenSession, "u", b => b.U64(1)));
            sent = c.Expect(CallEncryptMessage);
            c.Reply(sent, Reply(0, "u", b => b.U64(CKR_OPERATION_NOT_INITIALIZED)));
        }, version: 2, later: null);
        PointModuleAt(_broker.SocketPath);
        Assert.That(_module.Initialize(null), Is.EqualTo(Module3.CKR_OK), $"C_Initialize; fake: {_broker.Errors}");
        Assert.That(_module.OpenSession(0, out ulong session), Is.EqualTo(Module3.CKR_OK), "C_OpenSession");

        using var parameters = MessageParams.Gcm(new byte[12], 0, MessageParams.CKG_GENERATE_RANDOM, 128);
        using var output = new GuardedBuffer(32);
        ulong length = 32;
        Assert.That(_module.CryptMessage(true, session, parameters.Pointer, parameters.Length, [], new byte[16], output.Pointer, ref length),
            Is.EqualTo(CKR_MECHANISM_PARAM_INVALID), "C_EncryptMessage with a CK_GCM_MESSAGE_PARAMS");
        output.AssertUnwritten(0, "ciphertext");
        Assert.That(parameters.Iv.Bytes.ToArray(), Is.EqualTo(new byte[12]), "IV untouched");
        parameters.Tag.AssertUnwritten(0, "tag");

        // An absent parameter is sent, as NULL: the fake's answer comes back.
        length = 32;
        Assert.That(_module.CryptMessage(true, session, 0, 0, [], new byte[16], output.Pointer, ref length),
            Is.EqualTo(CKR_OPERATION_NOT_INITIALIZED), "C_EncryptMessage without a parameter reaches the peer");
        _broker.AssertScriptDone();
        // "uayayayfy": the session, then the parameter: present, NULL marker.
        var body = sent!.Body;
        int values = 4 + 4 + (int)BinaryPrimitives.ReadUInt32BigEndian(body.AsSpan(4));
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(body.AsSpan(values)), Is.EqualTo(1UL), "session");
        Assert.That(body[values + 8], Is.EqualTo(1), "parameter: present flag");
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(body.AsSpan(values + 9)), Is.EqualTo(0xffffffffu), "parameter: NULL");
    }

    private static readonly byte[] Announcement = "p11proxy-capabilities: typed-message-parameters/1"u8.ToArray();

    /// <summary>A fake that answers the handshake and C_Initialize itself, announcing typed parameters or not.</summary>
    private void StartRaw(Action<FakeConnection> script, bool announce)
    {
        _broker = new FakeBroker(c =>
        {
            c.Handshake(2);
            var init = c.Expect(CallInitialize);
            c.SendFrame(init.Code, Reply(CallInitialize, "", _ => { }), announce ? Announcement : null);
            script(c);
        }, version: 2, later: null, raw: true);
        PointModuleAt(_broker.SocketPath);
        Assert.That(_module.Initialize(null), Is.EqualTo(Module3.CKR_OK), $"C_Initialize; fake: {_broker.Errors}");
    }

    [Test]
    public void OperationsWhoseParametersHoldPointersAreRefusedByAPeerWithoutTypedParameters()
    {
        var sent = new List<uint>();
        StartRaw(c =>
        {
            c.Reply(c.Expect(CallOpenSession), Reply(CallOpenSession, "u", b => b.U64(1)));
            var init = c.Expect(CallMessageEncryptInit);
            sent.Add(init.CallId);
            c.Reply(init, Reply(CallMessageEncryptInit, "", _ => { }));
        }, announce: false);
        Assert.That(_module.OpenSession(0, out ulong session), Is.EqualTo(Module3.CKR_OK));
        // What p11-kit 0.25 and later would get: the operation refused at its start, as its own
        // client refuses a mechanism it cannot carry (NSS then falls back to C_EncryptInit).
        Assert.That(_module.MessageEncryptInit(session, CKM_AES_GCM, 2), Is.EqualTo(CKR_MECHANISM_INVALID), "GCM");
        // A mechanism without a known per-message structure starts (its calls carry only NULL).
        Assert.That(_module.MessageEncryptInit(session, CKM_AES_ECB, 2), Is.EqualTo(CKR_OK), "ECB");
        _broker!.AssertScriptDone();
        Assert.That(sent, Is.EqualTo(new[] { CallMessageEncryptInit }), "only the second reached the peer");
    }

    [Test]
    public void TypedParametersTravelByValueAndComeBackExactly()
    {
        Frame? request = null;
        byte[] generatedIv = Enumerable.Range(0, 12).Select(i => (byte)(0xa0 + i)).ToArray();
        byte[] tag = Enumerable.Range(0, 16).Select(i => (byte)(0x10 + i)).ToArray();
        StartRaw(c =>
        {
            c.Reply(c.Expect(CallOpenSession), Reply(CallOpenSession, "u", b => b.U64(1)));
            c.Reply(c.Expect(CallMessageEncryptInit), Reply(CallMessageEncryptInit, "", _ => { }));
            // 1: an update whose IV is one byte short: refused, nothing written.
            request = c.Expect(CallEncryptMessage);
            c.Reply(request, Reply(CallEncryptMessage, "uUay", b => b.U64(0).Bytes(generatedIv[..11]).U32(0xffffffff).Byte(1).Bytes(new byte[5])));
            // 2: a tag for a caller that has none of that size: refused.
            c.Reply(c.Expect(CallEncryptMessage), Reply(CallEncryptMessage, "uUay", b => b.U64(0).U32(0xffffffff).Bytes(new byte[17]).Byte(1).Bytes(new byte[5])));
            // 3: p11-kit's reply form to a typed request: refused.
            c.Reply(c.Expect(CallEncryptMessage), Reply(CallEncryptMessage, "ay", b => b.Byte(1).Bytes(new byte[5])));
            // 4: right: the IV and tag come back into the caller's buffers, the ciphertext into its output.
            c.Reply(c.Expect(CallEncryptMessage), Reply(CallEncryptMessage, "uUay", b => b.U64(0).Bytes(generatedIv).Bytes(tag).Byte(1).Bytes(new byte[] { 1, 2, 3, 4, 5 })));
        }, announce: true);
        Assert.That(_module.OpenSession(0, out ulong session), Is.EqualTo(Module3.CKR_OK));
        Assert.That(_module.MessageEncryptInit(session, CKM_AES_GCM, 2), Is.EqualTo(CKR_OK));
        var initialIv = new byte[12];
        using var parameters = MessageParams.Gcm(initialIv, 32, MessageParams.CKG_GENERATE_COUNTER, 128);
        using var output = new GuardedBuffer(5);
        for (int attempt = 1; attempt <= 3; attempt++)
        {
            ulong length = 5;
            Assert.That(_module.CryptMessage(true, session, parameters.Pointer, parameters.Length, [9], "plain"u8.ToArray(), output.Pointer, ref length),
                Is.EqualTo(CKR_DEVICE_ERROR), $"reply {attempt}");
            Assert.That(parameters.Iv.Bytes.ToArray(), Is.EqualTo(initialIv), $"reply {attempt}: IV untouched");
            parameters.Tag.AssertUnwritten(0, $"reply {attempt}: tag");
            output.AssertUnwritten(0, $"reply {attempt}: output");
        }
        ulong finalLength = 5;
        Assert.That(_module.CryptMessage(true, session, parameters.Pointer, parameters.Length, [9], "plain"u8.ToArray(), output.Pointer, ref finalLength),
            Is.EqualTo(CKR_OK));
        Assert.That(parameters.Iv.Bytes.ToArray(), Is.EqualTo(generatedIv), "generated IV copied back");
        Assert.That(parameters.Tag.Bytes.ToArray(), Is.EqualTo(tag), "tag copied back");
        Assert.That(output.Bytes.ToArray(), Is.EqualTo(new byte[] { 1, 2, 3, 4, 5 }));
        parameters.Iv.AssertBelowUntouched("IV");
        parameters.Tag.AssertBelowUntouched("tag");
        _broker!.AssertScriptDone();

        // The request: "uTayayfy", the parameter by value: form 1 (GCM), the IV's 12 bytes, fixed
        // bits, generator, the caller's tag buffer as it was (16 bytes), ulTagBits. No pointer.
        var body = request!.Body;
        int at = 4;
        int signatureLength = (int)BinaryPrimitives.ReadUInt32BigEndian(body.AsSpan(at));
        Assert.That(System.Text.Encoding.ASCII.GetString(body, at + 4, signatureLength), Is.EqualTo("uTayayfy"));
        at += 4 + signatureLength + 8; // the session
        Assert.That(body[at], Is.EqualTo(1), "form: GCM");
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(body.AsSpan(at + 1)), Is.EqualTo(12u), "IV length");
        Assert.That(body.AsSpan(at + 5, 12).ToArray(), Is.EqualTo(initialIv), "IV bytes");
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(body.AsSpan(at + 17)), Is.EqualTo(32UL), "fixed bits");
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(body.AsSpan(at + 25)), Is.EqualTo(MessageParams.CKG_GENERATE_COUNTER), "generator");
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(body.AsSpan(at + 33)), Is.EqualTo(16u), "tag length");
        Assert.That(body.AsSpan(at + 37, 16).ToArray(), Is.EqualTo(Enumerable.Repeat(GuardedBuffer.Canary, 16).ToArray()), "tag bytes as the caller's buffer held them");
        Assert.That(BinaryPrimitives.ReadUInt64BigEndian(body.AsSpan(at + 53)), Is.EqualTo(128UL), "tag bits");
    }

    /// <summary>
    /// What a p11-kit server sees of our module's start is what it saw before typed parameters
    /// existed: version byte 2, then a C_Initialize frame with an empty options field and p11-kit's
    /// own request body. And an announcement is believed only in the exact form our broker sends.
    /// </summary>
    [Test]
    public void TheModulesHandshakeIsTodays()
    {
        Frame? init = null;
        _broker = new FakeBroker(c =>
        {
            c.Handshake(2);
            init = c.Expect(CallInitialize);
            // A reply with options that merely look like ours: not an announcement.
            c.SendFrame(init.Code, Reply(CallInitialize, "", _ => { }), "p11proxy-capabilities: typed-message-parameters/2"u8.ToArray());
            c.Reply(c.Expect(CallOpenSession), Reply(CallOpenSession, "u", b => b.U64(1)));
            c.Reply(c.Expect(CallMessageEncryptInit), Reply(CallMessageEncryptInit, "", _ => { }));
        }, version: 2, later: null, raw: true);
        PointModuleAt(_broker.SocketPath);
        Assert.That(_module.Initialize(null), Is.EqualTo(Module3.CKR_OK));
        Assert.That(_broker.Offered, Is.EqualTo(2), "version byte");
        Assert.That(init!.Options, Is.Empty, "C_Initialize frame options");
        Assert.That(Convert.ToHexString(init.Body), Is.EqualTo(
            "00000001" + "00000005" + Convert.ToHexString("ayyay"u8) +
            "01" + "00000029" + Convert.ToHexString("PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"u8) + "00" + "01" + "00000001" + "00"),
            "C_Initialize body: handshake, no reserved string (sent as an empty one with its NUL, as p11-kit's client does)");
        // Not announced: GCM is refused at its start, as by any p11-kit peer.
        Assert.That(_module.OpenSession(0, out ulong session), Is.EqualTo(Module3.CKR_OK));
        Assert.That(_module.MessageEncryptInit(session, CKM_AES_GCM, 2), Is.EqualTo(CKR_MECHANISM_INVALID));
    }
}
