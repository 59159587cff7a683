using System.Buffers.Binary;
using System.Net.Sockets;
using System.Text;
using P11Proxy.Conformance;
using P11Proxy.HostileBroker;

// Its own namespace: the conformance namespace's SetUpFixture (SoftHSM loaded directly) is not needed.
namespace P11Proxy.MessageParameters;

/// <summary>
/// A hostile client against our broker, which serves NSS softoken (a PKCS#11 3.0 module that
/// dereferences the pointers in a message parameter) through a recording module
/// (native/recordingmodule.c) that logs every message-based data call before passing it on. The
/// client speaks p11-kit's wire form byte by byte, as p11-kit's own client would: the per-message
/// parameter of C_EncryptMessage and its kin travels as the raw bytes of a C structure whose
/// pointers are whatever the client chose. The broker must refuse each such call with
/// CKR_MECHANISM_PARAM_INVALID and a log line without calling the module (the recording shows no
/// call), and keep serving this client and others.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class MessageParameterGuardTests
{
    private SoftokenDb _db = null!;
    private Server _broker = null!;
    private string _recording = "";
    private string _dir = "";

    private const ulong CKR_OK = 0, CKR_MECHANISM_INVALID = 0x70, CKR_MECHANISM_PARAM_INVALID = 0x71, CKF_END_OF_MESSAGE = 1;
    private const ulong CKM_AES_GCM = 0x1087, CKG_GENERATE_RANDOM = 3;
    private const ulong DatabaseSlot = 2; // softoken: 1 is the generic crypto token, 2 the database token

    [OneTimeSetUp]
    public void Start()
    {
        _db = new SoftokenDb("guard");
        _dir = Directory.CreateTempSubdirectory("p11guard-").FullName;
        _recording = Path.Combine(_dir, "calls.log");
        string socket = Path.Combine(_dir, "broker.sock");
        _broker = new Server("p11proxy-broker serve", Paths.Broker(),
            ["serve", "--module", NativeHelpers.SharedLibrary("recordingmodule.c"), "--socket", socket], "/nonexistent", socket,
            new Dictionary<string, string>
            {
                ["RECORDING_MODULE_TARGET"] = SoftokenDb.Module,
                ["RECORDING_MODULE_LOG"] = _recording,
                ["RECORDING_MODULE_INIT_RESERVED"] = _db.InitString,
            });
    }

    [OneTimeTearDown]
    public void Stop()
    {
        _broker?.Dispose();
        _db?.Dispose();
        try { Directory.Delete(_dir, true); } catch (IOException) { }
    }

    /// <summary>Whether the broker's stderr (read asynchronously) shows <paramref name="text"/> within 10 s.</summary>
    private bool LogShows(string text)
    {
        var until = DateTime.UtcNow.AddSeconds(10);
        while (!_broker.Log.Contains(text, StringComparison.Ordinal))
        {
            if (DateTime.UtcNow > until) return false;
            Thread.Sleep(20);
        }
        return true;
    }

    private string[] Recorded() => File.Exists(_recording) ? File.ReadAllLines(_recording) : [];

    /// <summary>A CK_GCM_MESSAGE_PARAMS image (LP64) with the given pointer values.</summary>
    private static byte[] GcmParameters(ulong iv, ulong tag)
    {
        var image = new byte[48];
        BinaryPrimitives.WriteUInt64LittleEndian(image, iv);
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(8), 12);              // ulIvLen
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(16), 0);              // ulIvFixedBits
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(24), CKG_GENERATE_RANDOM);
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(32), tag);
        BinaryPrimitives.WriteUInt64LittleEndian(image.AsSpan(40), 128);            // ulTagBits
        return image;
    }

    /// <summary>
    /// Addresses a client might pick: unmapped, kernel space, and one that is mapped in every
    /// process of this machine at the same place (the vsyscall page) so a module given it would
    /// read there without crashing.
    /// </summary>
    private static readonly (string Name, ulong Iv, ulong Tag)[] Pointers =
    [
        ("unmapped", 0x4141414141414141, 0x4242424242424242),
        ("kernel", 0xffff_8000_0000_0000, 0xffff_8000_0000_1000),
        ("vsyscall page", 0xffff_ffff_ff60_0000, 0xffff_ffff_ff60_0100),
        ("low page", 0x1000, 0x2000),
    ];

    /// <summary>
    /// p11-kit's client puts its module name in every frame's options ("client"): the broker offers it
    /// nothing and refuses to start an operation whose parameters it cannot carry. A client with no
    /// options (ours, or an older p11proxy module) is offered typed parameters; one that still sends
    /// p11-kit's form may start the operation, but its raw parameters are refused all the same.
    /// </summary>
    [Test]
    public void RawParametersNeverReachTheModule([Values("client", "")] string frameOptions)
    {
        using var client = RawClient.Connect(_broker.Socket, Encoding.ASCII.GetBytes(frameOptions));
        bool p11KitClient = frameOptions.Length > 0;
        ulong initResult = p11KitClient ? CKR_MECHANISM_INVALID : CKR_OK;
        ulong session = client.OpenSession(DatabaseSlot);
        ulong key = client.CreateAesKey(session);
        int recordedBefore = Recorded().Length;
        var refusals = new List<string>();

        foreach (var (name, iv, tag) in Pointers)
        {
            var parameter = GcmParameters(iv, tag);
            // Every message-based data call, each with the pointer-holding parameter; the encrypt and
            // decrypt calls inside an operation softoken accepted (it runs one at a time per session),
            // the sign and verify calls outside one (softoken has no message signing).
            var encrypt = new (string Call, uint Id, string Signature, Action<Body> Arguments)[]
            {
                ("C_EncryptMessage", 69, "uayayayfy", b => b.U64(session).Array(parameter).Array("aad"u8.ToArray()).Array(new byte[20]).U32(64)),
                ("C_EncryptMessageBegin", 70, "uayay", b => b.U64(session).Array(parameter).Array("aad"u8.ToArray())),
                ("C_EncryptMessageNext", 71, "uayayfyu", b => b.U64(session).Array(parameter).Array(new byte[20]).U32(64).U64(CKF_END_OF_MESSAGE)),
            };
            var decrypt = new (string Call, uint Id, string Signature, Action<Body> Arguments)[]
            {
                ("C_DecryptMessage", 74, "uayayayfy", b => b.U64(session).Array(parameter).Array("aad"u8.ToArray()).Array(new byte[20]).U32(64)),
                ("C_DecryptMessageBegin", 75, "uayay", b => b.U64(session).Array(parameter).Array("aad"u8.ToArray())),
                ("C_DecryptMessageNext", 76, "uayayfyu", b => b.U64(session).Array(parameter).Array(new byte[20]).U32(64).U64(CKF_END_OF_MESSAGE)),
            };
            var signVerify = new (string Call, uint Id, string Signature, Action<Body> Arguments)[]
            {
                ("C_SignMessage", 79, "uayayfy", b => b.U64(session).Array(parameter).Array(new byte[20]).U32(64)),
                ("C_SignMessageBegin", 80, "uay", b => b.U64(session).Array(parameter)),
                ("C_SignMessageNext", 81, "uayayyfy", b => b.U64(session).Array(parameter).Array(new byte[20]).Byte(1).U32(64)),
                ("C_VerifyMessage", 84, "uayayay", b => b.U64(session).Array(parameter).Array(new byte[20]).Array(new byte[16])),
                ("C_VerifyMessageBegin", 85, "uay", b => b.U64(session).Array(parameter)),
                ("C_VerifyMessageNext", 86, "uayayay", b => b.U64(session).Array(parameter).Array(new byte[20]).Array(new byte[16])),
            };
            void Refused((string Call, uint Id, string Signature, Action<Body> Arguments)[] calls)
            {
                foreach (var (call, id, signature, arguments) in calls)
                {
                    ulong rv = client.Call(id, signature, arguments);
                    if (rv != CKR_MECHANISM_PARAM_INVALID) refusals.Add($"{call} with {name} pointers: 0x{rv:x}");
                }
            }
            Assert.That(client.Call(RawClient.MessageEncryptInit, "uMu", b => b.U64(session).U32((uint)CKM_AES_GCM).Byte(0).U64(key)),
                Is.EqualTo(initResult), "C_MessageEncryptInit(CKM_AES_GCM)");
            Refused(encrypt);
            if (!p11KitClient)
                Assert.That(client.Call(RawClient.MessageEncryptFinal, "u", b => b.U64(session)), Is.EqualTo(CKR_OK), "C_MessageEncryptFinal");
            Assert.That(client.Call(RawClient.MessageDecryptInit, "uMu", b => b.U64(session).U32((uint)CKM_AES_GCM).Byte(0).U64(key)),
                Is.EqualTo(initResult), "C_MessageDecryptInit(CKM_AES_GCM)");
            Refused(decrypt);
            if (!p11KitClient)
                Assert.That(client.Call(RawClient.MessageDecryptFinal, "u", b => b.U64(session)), Is.EqualTo(CKR_OK), "C_MessageDecryptFinal");
            Refused(signVerify);
        }
        Assert.That(refusals, Is.Empty, "each call refused with CKR_MECHANISM_PARAM_INVALID");
        Assert.That(Recorded().Skip(recordedBefore), Is.Empty, "no message call with a raw parameter reached the module");
        Assert.That(_broker.Running, Is.True, "the broker is still running");
        Assert.That(LogShows("C_EncryptMessage: refused a 48-byte message parameter sent as raw bytes"), Is.True,
            $"the broker's log line; its log: {_broker.Log}");

        if (p11KitClient)
            Assert.That(LogShows("C_MessageEncryptInit: CKM_AES_GCM takes per-message parameters that hold pointers"), Is.True,
                $"the broker's log line for the refused operation; its log: {_broker.Log}");

        // Control: the recording sees calls that do reach the module (an absent parameter does).
        client.Call(RawClient.EncryptMessage, "uayayayfy", b => b.U64(session).Null().Array("aad"u8.ToArray()).Array(new byte[20]).U32(64));
        Assert.That(Recorded().Skip(recordedBefore), Is.EqualTo(new[] { "C_EncryptMessage parameter=(nil) length=0" }),
            "the recording module logs the calls that reach it");

        // The same connection and a new one are still served.
        Assert.That(client.Call(RawClient.GetInfo, "", _ => { }), Is.EqualTo(CKR_OK), "C_GetInfo on the same connection");
        using var other = RawClient.Connect(_broker.Socket, "client"u8.ToArray());
        Assert.That(other.Call(RawClient.GetInfo, "", _ => { }), Is.EqualTo(CKR_OK), "C_GetInfo on another connection");
        Assert.That(_broker.Running, Is.True, "the broker is still running");
    }
}

/// <summary>
/// What p11-kit-client.so sees of our broker's start: the bytes p11-kit's server sends (its version
/// byte, then an empty C_Initialize reply with an empty options field), nothing of p11proxy's own.
/// A client that sends no options (ours) gets the announcement in the reply's options.
/// </summary>
[TestFixture]
[NonParallelizable]
public sealed class BrokerHandshakeTests
{
    [Test]
    public void P11KitsClientSeesTodaysBytesAndOursIsOffered()
    {
        string dir = Directory.CreateTempSubdirectory("p11handshake-").FullName;
        string socket = Path.Combine(dir, "broker.sock");
        using var db = new SoftokenDb("handshake");
        try
        {
            using var broker = new Server("p11proxy-broker serve", Paths.Broker(),
                ["serve", "--module", SoftokenDb.Module, "--init-reserved", db.InitString, "--socket", socket], "/nonexistent", socket);
            var emptyInitializeReply = "00000001" + "00000000";
            // p11-kit-client.so: version 2, options "client" in every frame.
            Assert.That(RawHandshake(socket, "client"u8.ToArray()), Is.EqualTo("02" + "00000010" + "00000000" + "00000008" + emptyInitializeReply));
            // A remote: module of p11-kit-proxy: options are the module's name.
            Assert.That(RawHandshake(socket, "my-token"u8.ToArray()), Is.EqualTo("02" + "00000010" + "00000000" + "00000008" + emptyInitializeReply));
            // Ours: no options, and the announcement comes back in the reply's options.
            var announcement = Convert.ToHexString("p11proxy-capabilities: typed-message-parameters/1"u8);
            Assert.That(RawHandshake(socket, []), Is.EqualTo("02" + "00000010" + $"{announcement.Length / 2:X8}" + "00000008" + announcement + emptyInitializeReply));
        }
        finally
        {
            Directory.Delete(dir, true);
        }
    }

    /// <summary>Everything the broker sends in answer to the version byte and a C_Initialize request (code 0x10), as hex.</summary>
    private static string RawHandshake(string path, byte[] options)
    {
        using var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(path));
        socket.ReceiveTimeout = 20000;
        var body = new Body().U32(1).Signature("ayyay").Array(Encoding.ASCII.GetBytes("PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1"))
            .Byte(0).Array([0]).ToArray();
        var request = new List<byte> { 2 };
        request.AddRange(FakeConnection.Header(0x10, (uint)options.Length, (uint)body.Length));
        request.AddRange(options);
        request.AddRange(body);
        socket.Send(request.ToArray());
        var received = new List<byte>();
        var buffer = new byte[4096];
        // The version byte and a 12-byte header tell how much follows.
        while (received.Count < 13 || received.Count < 13 + (int)BinaryPrimitives.ReadUInt32BigEndian(received.ToArray().AsSpan(5)) +
               (int)BinaryPrimitives.ReadUInt32BigEndian(received.ToArray().AsSpan(9)))
        {
            int got = socket.Receive(buffer);
            if (got == 0) break;
            received.AddRange(buffer[..got]);
        }
        return Convert.ToHexString(received.ToArray());
    }
}

internal static class BodyExtensions
{
    /// <summary>'ay' with data: a present flag, then the length-prefixed bytes.</summary>
    public static Body Array(this Body body, byte[] value) => body.Byte(1).Bytes(value);

    /// <summary>'ay' for a NULL pointer of length 0.</summary>
    public static Body Null(this Body body) => body.Byte(1).U32(0xffffffff);
}

/// <summary>A client that writes p11-kit's wire form byte by byte (protocol version 2).</summary>
internal sealed class RawClient : IDisposable
{
    public const uint GetInfo = 3, OpenSessionCall = 10, CreateObjectCall = 20, MessageEncryptInit = 68, EncryptMessage = 69,
        MessageEncryptFinal = 72, MessageDecryptInit = 73, MessageDecryptFinal = 77;

    private readonly Socket _socket;
    private readonly byte[] _options;
    private uint _code = 0x10;

    /// <summary>The reply body of the last successful call (after its call id and signature).</summary>
    public byte[] LastReply { get; private set; } = [];

    private RawClient(Socket socket, byte[] options)
    {
        _socket = socket;
        _options = options;
    }

    public static RawClient Connect(string path, byte[] options)
    {
        var socket = new Socket(AddressFamily.Unix, SocketType.Stream, ProtocolType.Unspecified);
        socket.Connect(new UnixDomainSocketEndPoint(path));
        socket.ReceiveTimeout = 20000;
        var client = new RawClient(socket, options);
        socket.Send([2]);
        var version = new byte[1];
        client.ReadExactly(version);
        Assert.That(version[0], Is.EqualTo(2), "protocol version");
        ulong rv = client.Call(1, "ayyay", b => b.Array(Encoding.ASCII.GetBytes("PRIVATE-GNOME-KEYRING-PKCS11-PROTOCOL-V-1")).Byte(0).Array([0]));
        Assert.That(rv, Is.EqualTo(0UL), "C_Initialize");
        return client;
    }

    public ulong OpenSession(ulong slot)
    {
        Assert.That(Call(OpenSessionCall, "uu", b => b.U64(slot).U64(6)), Is.EqualTo(0UL), "C_OpenSession");
        return BinaryPrimitives.ReadUInt64BigEndian(LastReply);
    }

    /// <summary>A session AES-256 key for encryption and decryption.</summary>
    public ulong CreateAesKey(ulong session)
    {
        ulong rv = Call(CreateObjectCall, "uaA", b =>
        {
            b.U64(session).U32(5);
            b.U32(0x0).Byte(1).U32(8).U64(4);           // CKA_CLASS = CKO_SECRET_KEY
            b.U32(0x100).Byte(1).U32(8).U64(0x1f);      // CKA_KEY_TYPE = CKK_AES
            b.U32(0x11).Byte(1).U32(32).Bytes(Enumerable.Range(0, 32).Select(i => (byte)i).ToArray()); // CKA_VALUE
            b.U32(0x104).Byte(1).U32(1).Byte(1);        // CKA_ENCRYPT
            b.U32(0x105).Byte(1).U32(1).Byte(1);        // CKA_DECRYPT
        });
        Assert.That(rv, Is.EqualTo(0UL), "C_CreateObject");
        return BinaryPrimitives.ReadUInt64BigEndian(LastReply);
    }

    /// <summary>Sends one request and returns the CK_RV: 0 for a normal reply (kept in <see cref="LastReply"/>), else the error reply's code.</summary>
    public ulong Call(uint id, string signature, Action<Body> arguments)
    {
        var body = new Body().U32(id).Signature(signature);
        arguments(body);
        var bytes = body.ToArray();
        uint code = _code++;
        var frame = new byte[12 + _options.Length + bytes.Length];
        FakeConnection.Header(code, (uint)_options.Length, (uint)bytes.Length).CopyTo(frame, 0);
        _options.CopyTo(frame, 12);
        bytes.CopyTo(frame, 12 + _options.Length);
        _socket.Send(frame);

        var header = new byte[12];
        ReadExactly(header);
        Assert.That(BinaryPrimitives.ReadUInt32BigEndian(header), Is.EqualTo(code), "reply code");
        var rest = new byte[BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4)) + BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(8))];
        ReadExactly(rest);
        var reply = rest.AsSpan((int)BinaryPrimitives.ReadUInt32BigEndian(header.AsSpan(4)));
        uint replyId = BinaryPrimitives.ReadUInt32BigEndian(reply);
        int signatureLength = (int)BinaryPrimitives.ReadUInt32BigEndian(reply[4..]);
        var values = reply[(8 + signatureLength)..];
        if (replyId == 0)
            return BinaryPrimitives.ReadUInt64BigEndian(values);
        Assert.That(replyId, Is.EqualTo(id), "reply call id");
        LastReply = values.ToArray();
        return 0;
    }

    private void ReadExactly(Span<byte> destination)
    {
        while (!destination.IsEmpty)
        {
            int got = _socket.Receive(destination);
            if (got == 0) throw new IOException("the broker closed the connection");
            destination = destination[got..];
        }
    }

    public void Dispose() => _socket.Dispose();
}
