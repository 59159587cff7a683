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
    private const uint CallOpenSession = 10, CallEncryptMessage = 69;
    private const ulong CKR_MECHANISM_PARAM_INVALID = 0x71, CKR_OPERATION_NOT_INITIALIZED = 0x91;

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
        NativeEnv.Set("P11_KIT_SERVER_ADDRESS", "unix:path=" + _broker.SocketPath);
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
}
