using System.Security.Cryptography;
using P11Proxy.Conformance;
using P11Proxy.HostileBroker;

// Its own namespace: the conformance namespace's SetUpFixture (SoftHSM loaded directly) is not needed.
namespace P11Proxy.Softoken;

/// <summary>
/// PKCS #11 3.0 against NSS softoken, differentially: every scenario runs on softoken loaded
/// directly and through one stack, through its CK_FUNCTION_LIST_3_0 (Pkcs11Interop has no 3.0
/// calls). Ciphertexts and tags are checked against OpenSSL (.NET's AesGcm and ChaCha20Poly1305 on
/// Linux); token-generated IVs must come back in the caller's IV buffer, which ends at a guard page.
/// Stacks without the 3.0 calls (a p11-kit 0.24 peer, protocol version 0, p11-kit 0.24's client
/// module) must say so exactly as documented, not half-work.
/// </summary>
[TestFixtureSource(typeof(SoftokenStack), nameof(SoftokenStack.Names))]
[NonParallelizable]
public sealed class SoftokenMessageTests(string name)
{
    private const ulong CKM_AES_GCM = 0x1087, CKM_AES_CCM = 0x1088, CKM_CHACHA20_POLY1305 = 0x4021, CKM_SHA256_HMAC = 0x251;
    private const ulong CKK_AES = 0x1f, CKK_CHACHA20 = 0x33, CKK_GENERIC_SECRET = 0x10;
    private const ulong CKR_OK = 0, CKR_ARGUMENTS_BAD = 7, CKR_ENCRYPTED_DATA_INVALID = 0x40, CKR_FUNCTION_NOT_SUPPORTED = 0x54,
        CKR_MECHANISM_PARAM_INVALID = 0x71, CKR_SIGNATURE_INVALID = 0xc0, CKR_BUFFER_TOO_SMALL = 0x150;
    private const ulong CKF_MESSAGE_ENCRYPT = 2, CKF_END_OF_MESSAGE = 1, CKU_USER = 1, CKF_INTERFACE_FORK_SAFE = 1;

    private readonly SoftokenStack _stack = new(name);
    private Module3 _target = null!;
    private ulong _slot, _directSlot;

    private static Module3 Direct => SoftokenDirect.Module;

    /// <summary>The stack carries the 3.0 calls: results must equal softoken's directly.</summary>
    private bool Knows30Calls => !_stack.Protocol0 && !_stack.No30Interface;

    /// <summary>
    /// The stack carries message encryption. Over protocol version 1 (our module offering only what
    /// p11-kit 0.25.0-0.25.5 speak) it cannot start: that version's mechanism layout has no way to
    /// send CKM_AES_GCM without a CK_GCM_PARAMS (p11-kit's client of those versions fails the same
    /// way), and it hides ChaCha20-Poly1305.
    /// </summary>
    private bool Carries30 => Knows30Calls && _stack.Name != "broker-v1";

    /// <summary>
    /// Whether the stack hides a mechanism, as p11-kit's client of its protocol version hides those
    /// whose 2.40 parameters it cannot carry: p11-kit 0.24 (version 0) none of these three, p11-kit
    /// 0.25.0-0.25.5 (version 1, our module offering only that) knows GCM but not ChaCha20-Poly1305
    /// or CCM. Hidden means C_GetMechanismInfo and every *Init answer CKR_MECHANISM_INVALID.
    /// </summary>
    private bool Hidden(ulong mechanism) =>
        _stack.Protocol0 || _stack.No30Interface ? mechanism is CKM_AES_GCM or CKM_CHACHA20_POLY1305 or CKM_AES_CCM
        : _stack.Name == "broker-v1" && mechanism is CKM_CHACHA20_POLY1305 or CKM_AES_CCM;

    [OneTimeSetUp]
    public void Start()
    {
        _directSlot = Direct.SlotOf(SoftokenDirect.TokenLabel);
        _stack.Start();
        if (_stack.IsDirect)
        {
            _target = Direct;
        }
        else
        {
            _target = Module3.Load(_stack.ModulePath);
            ulong rv = _target.Initialize(null);
            Assert.That(rv, Is.EqualTo(CKR_OK), $"{name}: C_Initialize 0x{rv:x}; server: {_stack.ServerLog}");
        }
        _slot = _target.SlotOf(SoftokenDirect.TokenLabel);
    }

    [OneTimeTearDown]
    public void Stop()
    {
        if (!_stack.IsDirect) _target?.Finalize();
        _stack.Dispose();
    }

    [Test]
    public void TheStackOffersThe30InterfaceAsDocumented()
    {
        // p11-kit 0.24's p11-kit-client.so exports only C_GetFunctionList: a 2.40 module.
        Assert.That(_target.Has30, Is.EqualTo(!_stack.No30Interface));
    }

    // ---- helpers -------------------------------------------------------------------------------------------

    /// <summary>
    /// A logged-in session on the database token with a session key of <paramref name="keyType"/>.
    /// A login is the token's, not the session's: a second session of a module already logged in
    /// gets CKR_USER_ALREADY_LOGGED_IN (<paramref name="alreadyLoggedIn"/>).
    /// </summary>
    private static (ulong Session, ulong Key) SessionWithKey(Module3 module, ulong slot, ulong keyType, byte[] value, bool alreadyLoggedIn)
    {
        Assert.That(module.OpenSession(slot, out ulong session), Is.EqualTo(CKR_OK), $"{module.Path}: C_OpenSession");
        Assert.That(module.Login(session, SoftokenDirect.Pin), Is.EqualTo(alreadyLoggedIn ? 0x100UL : CKR_OK), $"{module.Path}: C_Login");
        Assert.That(module.CreateSecretKey(session, keyType, value, out ulong key), Is.EqualTo(CKR_OK), $"{module.Path}: C_CreateObject");
        return (session, key);
    }

    /// <summary>Runs <paramref name="scenario"/> on softoken directly and through the stack, in sessions of their own.</summary>
    private (T Direct, T Target) Both<T>(ulong keyType, byte[] key, Func<Module3, ulong, ulong, T> scenario)
    {
        var (directSession, directKey) = SessionWithKey(Direct, _directSlot, keyType, key, alreadyLoggedIn: false);
        var (targetSession, targetKey) = SessionWithKey(_target, _slot, keyType, key, alreadyLoggedIn: _stack.IsDirect);
        try
        {
            return (scenario(Direct, directSession, directKey), scenario(_target, targetSession, targetKey));
        }
        finally
        {
            Direct.CloseSession(directSession);
            _target.CloseSession(targetSession);
        }
    }

    private static readonly byte[] AesKey = Enumerable.Range(0, 32).Select(i => (byte)(i * 7 + 1)).ToArray();
    private static readonly byte[] Aad = "associated data"u8.ToArray();
    private static readonly byte[] Plaintext = "a message of thirty-seven bytes......"u8.ToArray();

    /// <summary>Encrypts with the operation already started; returns the CK_RV, ciphertext, IV and tag as the caller's memory holds them.</summary>
    private static (ulong Rv, byte[] Ciphertext, byte[] Iv, byte[] Tag) Encrypt(Module3 module, ulong session, MessageParams parameters,
        byte[] plaintext, byte[]? aad = null)
    {
        using var output = new GuardedBuffer(plaintext.Length);
        ulong length = (ulong)plaintext.Length;
        ulong rv = module.CryptMessage(true, session, parameters.Pointer, parameters.Length, aad ?? Aad, plaintext, output.Pointer, ref length);
        output.AssertBelowUntouched("ciphertext");
        parameters.Iv.AssertBelowUntouched("IV");
        parameters.Tag.AssertBelowUntouched("tag");
        return (rv, rv == CKR_OK ? output.Bytes[..(int)length].ToArray() : [], parameters.Iv.Bytes.ToArray(), parameters.Tag.Bytes.ToArray());
    }

    private static (ulong Rv, byte[] Plaintext) Decrypt(Module3 module, ulong session, MessageParams parameters, byte[] ciphertext)
    {
        using var output = new GuardedBuffer(ciphertext.Length);
        ulong length = (ulong)ciphertext.Length;
        ulong rv = module.CryptMessage(false, session, parameters.Pointer, parameters.Length, Aad, ciphertext, output.Pointer, ref length);
        return (rv, rv == CKR_OK ? output.Bytes[..(int)length].ToArray() : []);
    }


    // ---- AES-GCM ------------------------------------------------------------------------------------------

    [Test]
    public void AesGcmEncryptsAndDecryptsAsOpenSsl()
    {
        if (!Carries30) { AssertNot30Everywhere(); return; }
        var iv = Enumerable.Range(0, 12).Select(i => (byte)(0xc0 + i)).ToArray();
        var expectedCiphertext = new byte[Plaintext.Length];
        var expectedTag = new byte[16];
        using (var gcm = new AesGcm(AesKey, 16))
            gcm.Encrypt(iv, Plaintext, expectedCiphertext, expectedTag, Aad);

        var (direct, target) = Both(CKK_AES, AesKey, (m, session, key) =>
        {
            var steps = new List<string>();
            ulong rv = m.MessageEncryptInit(session, CKM_AES_GCM, key);
            steps.Add($"C_MessageEncryptInit 0x{rv:x}");
            if (rv != CKR_OK) return steps;
            using (var parameters = MessageParams.Gcm(iv, 0, MessageParams.CKG_NO_GENERATE, 128))
            {
                var (encryptRv, ciphertext, ivAfter, tag) = Encrypt(m, session, parameters, Plaintext);
                steps.Add($"C_EncryptMessage 0x{encryptRv:x}");
                Assert.That(encryptRv, Is.EqualTo(CKR_OK), $"{m.Path}: C_EncryptMessage");
                Assert.That(ciphertext, Is.EqualTo(expectedCiphertext), $"{m.Path}: ciphertext as OpenSSL's");
                Assert.That(tag, Is.EqualTo(expectedTag), $"{m.Path}: tag as OpenSSL's, in the caller's tag buffer");
                Assert.That(ivAfter, Is.EqualTo(iv), $"{m.Path}: IV left as it was");
            }
            steps.Add($"C_MessageEncryptFinal 0x{m.MessageEncryptFinal(session):x}");
            steps.Add($"C_MessageDecryptInit 0x{m.MessageDecryptInit(session, CKM_AES_GCM, key):x}");
            using (var parameters = MessageParams.Gcm(iv, 0, MessageParams.CKG_NO_GENERATE, 128))
            {
                expectedTag.CopyTo(parameters.Tag.Bytes);
                var (decryptRv, plaintext) = Decrypt(m, session, parameters, expectedCiphertext);
                steps.Add($"C_DecryptMessage 0x{decryptRv:x}");
                Assert.That(plaintext, Is.EqualTo(Plaintext), $"{m.Path}: decrypted");
                parameters.Tag.Bytes[0] ^= 1;
                steps.Add($"C_DecryptMessage, wrong tag 0x{Decrypt(m, session, parameters, expectedCiphertext).Rv:x}");
                parameters.Tag.Bytes[0] ^= 1;
                expectedCiphertext[0] ^= 1;
                steps.Add($"C_DecryptMessage, altered ciphertext 0x{Decrypt(m, session, parameters, expectedCiphertext).Rv:x}");
                expectedCiphertext[0] ^= 1;
            }
            steps.Add($"C_MessageDecryptFinal 0x{m.MessageDecryptFinal(session):x}");
            return steps;
        });
        Assert.That(direct, Does.Contain($"C_DecryptMessage, wrong tag 0x{CKR_ENCRYPTED_DATA_INVALID:x}"), "softoken refuses a wrong tag");
        Assert.That(target, Is.EqualTo(direct), $"{name}: the same results as softoken directly");
    }

    /// <summary>Encrypts <paramref name="count"/> messages with a token-generated IV, returning what each call left in the caller's IV buffer.</summary>
    private static List<(ulong Rv, byte[] Iv, byte[] Ciphertext, byte[] Tag)> GeneratedIvs(Module3 m, ulong session, ulong key,
        ulong generator, ulong fixedBits, byte[] initialIv, int count)
    {
        var results = new List<(ulong, byte[], byte[], byte[])>();
        Assert.That(m.MessageEncryptInit(session, CKM_AES_GCM, key), Is.EqualTo(CKR_OK), $"{m.Path}: C_MessageEncryptInit");
        using var parameters = MessageParams.Gcm(initialIv, fixedBits, generator, 128);
        for (int i = 0; i < count; i++)
        {
            var (rv, ciphertext, iv, tag) = Encrypt(m, session, parameters, Plaintext);
            results.Add((rv, iv, ciphertext, tag));
        }
        Assert.That(m.MessageEncryptFinal(session), Is.EqualTo(CKR_OK));
        return results;
    }

    private static void AssertDecryptsWithOpenSsl(string who, (ulong Rv, byte[] Iv, byte[] Ciphertext, byte[] Tag) message)
    {
        Assert.That(message.Rv, Is.EqualTo(CKR_OK), $"{who}: C_EncryptMessage");
        var plaintext = new byte[message.Ciphertext.Length];
        using var gcm = new AesGcm(AesKey, 16);
        // Succeeds only if the IV in the caller's buffer is the one the token used, and the tag its tag.
        gcm.Decrypt(message.Iv, message.Ciphertext, message.Tag, plaintext, Aad);
        Assert.That(plaintext, Is.EqualTo(Plaintext), $"{who}: OpenSSL decrypts with the IV and tag the caller got back");
    }

    [Test]
    public void RandomIvsComeBackIntoTheCallersBuffer()
    {
        if (!Carries30) { AssertNot30Everywhere(); return; }
        var initial = new byte[12];
        var (direct, target) = Both(CKK_AES, AesKey, (m, session, key) =>
            GeneratedIvs(m, session, key, MessageParams.CKG_GENERATE_RANDOM, 0, initial, 3));
        foreach (var (who, results) in new[] { ("direct", direct), (name, target) })
        {
            foreach (var message in results) AssertDecryptsWithOpenSsl(who, message);
            Assert.That(results.Select(r => Convert.ToHexString(r.Iv)).Distinct().Count(), Is.EqualTo(3), $"{who}: three different IVs");
            Assert.That(results.Select(r => r.Iv), Has.None.EqualTo(initial), $"{who}: the token wrote each IV");
        }
        // With ulIvFixedBits softoken refuses random generation: the same refusal through the stack.
        var (directFixed, targetFixed) = Both(CKK_AES, AesKey, (m, session, key) =>
            GeneratedIvs(m, session, key, MessageParams.CKG_GENERATE_RANDOM, 32, initial, 1)[0].Rv);
        Assert.That(directFixed, Is.EqualTo(CKR_ARGUMENTS_BAD), "softoken: random IV with fixed bits");
        Assert.That(targetFixed, Is.EqualTo(directFixed), name);
    }

    [Test]
    public void CounterIvsComeBackIntoTheCallersBuffer()
    {
        if (!Carries30) { AssertNot30Everywhere(); return; }
        var initial = Enumerable.Repeat((byte)0x77, 12).ToArray();
        foreach (ulong generator in new[] { MessageParams.CKG_GENERATE_COUNTER, MessageParams.CKG_GENERATE_COUNTER_XOR })
        {
            var (direct, target) = Both(CKK_AES, AesKey, (m, session, key) => GeneratedIvs(m, session, key, generator, 32, initial, 3));
            foreach (var message in direct.Concat(target)) AssertDecryptsWithOpenSsl($"{name}, generator {generator}", message);
            // A counter is deterministic: the same IVs as softoken directly, the 32 fixed bits kept.
            Assert.That(target.Select(r => Convert.ToHexString(r.Iv)), Is.EqualTo(direct.Select(r => Convert.ToHexString(r.Iv))),
                $"{name}: generator {generator}");
            Assert.That(direct.Select(r => r.Iv[..4]), Has.All.EqualTo(initial[..4]), "fixed bits kept");
            Assert.That(direct.Select(r => Convert.ToHexString(r.Iv)).Distinct().Count(), Is.EqualTo(3), "three IVs");
        }
    }

    [Test]
    public void SizeQueriesAndShortBuffersConsumeNoIv()
    {
        if (!Carries30) { AssertNot30Everywhere(); return; }
        var (direct, target) = Both(CKK_AES, AesKey, (m, session, key) =>
        {
            var steps = new List<string>();
            Assert.That(m.MessageEncryptInit(session, CKM_AES_GCM, key), Is.EqualTo(CKR_OK));
            using var parameters = MessageParams.Gcm(new byte[12], 0, MessageParams.CKG_GENERATE_COUNTER, 128);
            ulong length = 0;
            ulong rv = m.CryptMessage(true, session, parameters.Pointer, parameters.Length, Aad, Plaintext, 0, ref length);
            steps.Add($"size query 0x{rv:x} length {length} iv {Convert.ToHexString(parameters.Iv.Bytes)}");
            using (var small = new GuardedBuffer(2))
            {
                length = 2;
                rv = m.CryptMessage(true, session, parameters.Pointer, parameters.Length, Aad, Plaintext, small.Pointer, ref length);
                steps.Add($"2-byte buffer 0x{rv:x} length {length} iv {Convert.ToHexString(parameters.Iv.Bytes)}");
            }
            var (encryptRv, _, iv, _) = Encrypt(m, session, parameters, Plaintext);
            steps.Add($"encrypt 0x{encryptRv:x} iv {Convert.ToHexString(iv)}");
            Assert.That(m.MessageEncryptFinal(session), Is.EqualTo(CKR_OK));
            return steps;
        });
        Assert.That(direct[0], Does.StartWith($"size query 0x0 length {Plaintext.Length}"), "softoken's size answer");
        Assert.That(direct[1], Does.StartWith($"2-byte buffer 0x{CKR_BUFFER_TOO_SMALL:x}"), "softoken's short-buffer answer");
        Assert.That(target, Is.EqualTo(direct), $"{name}: the same answers, and the first counter IV comes with the first real encryption");
    }

    // ---- ChaCha20-Poly1305 ----------------------------------------------------------------------------------

    [Test]
    public void ChaCha20Poly1305EncryptsAndDecryptsAsOpenSsl()
    {
        var key = Enumerable.Range(0, 32).Select(i => (byte)(0x80 + i)).ToArray();
        if (Knows30Calls && Hidden(CKM_CHACHA20_POLY1305))
        {
            var (_, refused) = Both(CKK_CHACHA20, key, (m, session, k) => m.MessageEncryptInit(session, CKM_CHACHA20_POLY1305, k));
            Assert.That(refused, Is.EqualTo(0x70UL), $"{name}: hidden over protocol version 1, refused at its start");
            return;
        }
        if (!Carries30) { AssertNot30Everywhere(); return; }
        Assert.That(ChaCha20Poly1305.IsSupported, Is.True, "OpenSSL's ChaCha20-Poly1305 through .NET");
        var nonce = Enumerable.Range(0, 12).Select(i => (byte)(i * 3)).ToArray();
        var expectedCiphertext = new byte[Plaintext.Length];
        var expectedTag = new byte[16];
        using (var chacha = new ChaCha20Poly1305(key))
            chacha.Encrypt(nonce, Plaintext, expectedCiphertext, expectedTag, Aad);

        var (direct, target) = Both(CKK_CHACHA20, key, (m, session, k) =>
        {
            var steps = new List<string>();
            Assert.That(m.MessageEncryptInit(session, CKM_CHACHA20_POLY1305, k), Is.EqualTo(CKR_OK), $"{m.Path}: C_MessageEncryptInit");
            using (var parameters = MessageParams.ChaChaPoly(nonce))
            {
                var (rv, ciphertext, _, tag) = Encrypt(m, session, parameters, Plaintext);
                Assert.That(rv, Is.EqualTo(CKR_OK), $"{m.Path}: C_EncryptMessage");
                Assert.That(ciphertext, Is.EqualTo(expectedCiphertext), $"{m.Path}: ciphertext as OpenSSL's");
                Assert.That(tag, Is.EqualTo(expectedTag), $"{m.Path}: tag as OpenSSL's");
            }
            Assert.That(m.MessageEncryptFinal(session), Is.EqualTo(CKR_OK));
            Assert.That(m.MessageDecryptInit(session, CKM_CHACHA20_POLY1305, k), Is.EqualTo(CKR_OK), $"{m.Path}: C_MessageDecryptInit");
            using (var parameters = MessageParams.ChaChaPoly(nonce))
            {
                expectedTag.CopyTo(parameters.Tag.Bytes);
                var (rv, plaintext) = Decrypt(m, session, parameters, expectedCiphertext);
                Assert.That(rv, Is.EqualTo(CKR_OK), $"{m.Path}: C_DecryptMessage");
                Assert.That(plaintext, Is.EqualTo(Plaintext), $"{m.Path}: decrypted");
                parameters.Tag.Bytes[15] ^= 0x80;
                steps.Add($"wrong tag 0x{Decrypt(m, session, parameters, expectedCiphertext).Rv:x}");
            }
            Assert.That(m.MessageDecryptFinal(session), Is.EqualTo(CKR_OK));
            return steps;
        });
        Assert.That(direct, Is.EqualTo(new[] { $"wrong tag 0x{CKR_ENCRYPTED_DATA_INVALID:x}" }), "softoken refuses a wrong tag");
        Assert.That(target, Is.EqualTo(direct), name);
    }

    // ---- what softoken does not do, with its own CK_RVs -------------------------------------------------------

    [Test]
    public void MultiPartMessagesAndMessageSigningGiveSoftokensAnswers()
    {
        if (_stack.No30Interface) { AssertNot30Everywhere(); return; }
        var hmacKey = Enumerable.Range(0, 32).Select(i => (byte)i).ToArray();
        var (direct, target) = Both(CKK_GENERIC_SECRET, hmacKey, (m, session, key) =>
        {
            var steps = new List<string>();
            using var parameters = MessageParams.Gcm(new byte[12], 0, MessageParams.CKG_NO_GENERATE, 128);
            ulong length = 64;
            using var output = new GuardedBuffer(64);
            steps.Add($"C_MessageSignInit 0x{m.MessageSignInit(session, CKM_SHA256_HMAC, key):x}");
            steps.Add($"C_SignMessage 0x{m.SignMessage(session, 0, 0, Plaintext, output.Pointer, ref length):x}");
            steps.Add($"C_SignMessageBegin 0x{m.SignMessageBegin(session, 0, 0):x}");
            unsafe
            {
                ulong nextLength = 64;
                steps.Add($"C_SignMessageNext 0x{m.SignMessageNext(session, 0, 0, Plaintext, output.Pointer, &nextLength):x}");
            }
            steps.Add($"C_MessageSignFinal 0x{m.MessageSignFinal(session):x}");
            steps.Add($"C_MessageVerifyInit 0x{m.MessageVerifyInit(session, CKM_SHA256_HMAC, key):x}");
            steps.Add($"C_VerifyMessage 0x{m.VerifyMessage(session, 0, 0, Plaintext, new byte[32]):x}");
            steps.Add($"C_VerifyMessageBegin 0x{m.VerifyMessageBegin(session, 0, 0):x}");
            steps.Add($"C_VerifyMessageNext 0x{m.VerifyMessageNext(session, 0, 0, Plaintext, new byte[32]):x}");
            steps.Add($"C_MessageVerifyFinal 0x{m.MessageVerifyFinal(session):x}");
            return steps;
        });
        var (directGcm, targetGcm) = Both(CKK_AES, AesKey, (m, session, key) =>
        {
            var steps = new List<string>();
            using var parameters = MessageParams.Gcm(new byte[12], 0, MessageParams.CKG_NO_GENERATE, 128);
            using var output = new GuardedBuffer(64);
            foreach (bool encrypt in new[] { true, false })
            {
                ulong rv = encrypt ? m.MessageEncryptInit(session, CKM_AES_GCM, key) : m.MessageDecryptInit(session, CKM_AES_GCM, key);
                steps.Add($"init {encrypt} 0x{rv:x}");
                steps.Add($"begin 0x{m.CryptMessageBegin(encrypt, session, parameters.Pointer, parameters.Length, Aad):x}");
                ulong length = 64;
                steps.Add($"next 0x{m.CryptMessageNext(encrypt, session, parameters.Pointer, parameters.Length, Plaintext, output.Pointer, ref length, CKF_END_OF_MESSAGE):x}");
                steps.Add($"final 0x{(encrypt ? m.MessageEncryptFinal(session) : m.MessageDecryptFinal(session)):x}");
            }
            // CCM is listed with CKF_MESSAGE_ENCRYPT, yet softoken's message interface has no CCM
            // (CKR_MECHANISM_INVALID, the answer a stack that hides CCM gives too).
            steps.Add($"CCM init 0x{m.MessageEncryptInit(session, CKM_AES_CCM, key):x}");
            return steps;
        });
        if (_stack.Protocol0)
        {
            Assert.That(target.Concat(targetGcm).Select(s => s.Split("0x")[1]), Has.All.EqualTo("54"),
                $"{name}: every 3.0 call is CKR_FUNCTION_NOT_SUPPORTED over protocol version 0");
            return;
        }
        Assert.That(direct, Has.All.EndsWith($"0x{CKR_FUNCTION_NOT_SUPPORTED:x}"), "softoken has no message signing");
        Assert.That(directGcm, Does.Contain($"begin 0x{CKR_FUNCTION_NOT_SUPPORTED:x}"), "softoken has no multi-part messages");
        Assert.That(target, Is.EqualTo(direct), $"{name}: message signing");
        if (Carries30)
            Assert.That(targetGcm, Is.EqualTo(directGcm), $"{name}: multi-part messages and CCM");
        else
            Assert.That(targetGcm[0], Is.EqualTo($"init True 0x{CKR_MECHANISM_PARAM_INVALID:x}"), $"{name}: GCM cannot start over version 1");
    }

    [Test]
    public void TwoPointFortyMultiPartSigningAsOpenSsl()
    {
        // The 2.40 multi-part calls (every stack carries them): HMAC-SHA256 equal to OpenSSL's.
        var hmacKey = Enumerable.Range(0, 32).Select(i => (byte)(255 - i)).ToArray();
        var expected = HMACSHA256.HashData(hmacKey, Plaintext);
        var (direct, target) = Both(CKK_GENERIC_SECRET, hmacKey, (m, session, key) =>
        {
            Assert.That(m.SignInit(session, CKM_SHA256_HMAC, key), Is.EqualTo(CKR_OK), $"{m.Path}: C_SignInit");
            Assert.That(m.SignUpdate(session, Plaintext[..10]), Is.EqualTo(CKR_OK));
            Assert.That(m.SignUpdate(session, Plaintext[10..]), Is.EqualTo(CKR_OK));
            Assert.That(m.SignFinal(session, out var signature), Is.EqualTo(CKR_OK), $"{m.Path}: C_SignFinal");
            Assert.That(signature, Is.EqualTo(expected), $"{m.Path}: HMAC as OpenSSL's");
            var results = new List<ulong>();
            foreach (var candidate in new[] { signature, signature.Select((b, i) => i == 0 ? (byte)(b ^ 1) : b).ToArray() })
            {
                Assert.That(m.VerifyInit(session, CKM_SHA256_HMAC, key), Is.EqualTo(CKR_OK));
                Assert.That(m.VerifyUpdate(session, Plaintext), Is.EqualTo(CKR_OK));
                results.Add(m.VerifyFinal(session, candidate));
            }
            return results;
        });
        // A wrong MAC is refused; which CK_RV softoken says then comes from NSPR's per-thread last
        // error, stale from whatever failed before on that thread (CKR_DEVICE_ERROR on a fresh thread,
        // CKR_BUFFER_TOO_SMALL after a short buffer): not comparable between processes.
        Assert.That(direct[0], Is.EqualTo(CKR_OK), "softoken verifies its MAC");
        Assert.That(direct[1], Is.Not.EqualTo(CKR_OK), "softoken refuses a wrong MAC");
        Assert.That(target[0], Is.EqualTo(CKR_OK), $"{name}: verifies");
        Assert.That(target[1], Is.Not.EqualTo(CKR_OK), $"{name}: refuses a wrong MAC");
    }

    [Test]
    public void LoginUserAndSessionCancelGiveSoftokensAnswers()
    {
        if (_stack.No30Interface) { AssertNot30Everywhere(); return; }
        var (direct, target) = Both(CKK_AES, AesKey, (m, session, _) => new[]
        {
            $"C_LoginUser 0x{m.LoginUser(session, CKU_USER, SoftokenDirect.Pin, "someone"):x}",
            $"C_SessionCancel own session 0x{m.SessionCancel(session, CKF_MESSAGE_ENCRYPT):x}",
            // A handle no session has: softoken says CKR_OPERATION_CANCEL_FAILED, and so must the stack.
            $"C_SessionCancel unknown handle 0x{m.SessionCancel(0x7777_0000, CKF_MESSAGE_ENCRYPT):x}",
        });
        if (_stack.Protocol0)
        {
            Assert.That(target.Select(s => s.Split("0x")[1]), Has.All.EqualTo("54"), $"{name}: not in protocol version 0");
            return;
        }
        Assert.That(direct[2], Is.EqualTo("C_SessionCancel unknown handle 0x202"), "softoken's answer");
        Assert.That(target, Is.EqualTo(direct), name);
    }

    [Test]
    public void MechanismInfoCarriesTheMessageFlags()
    {
        // (Softoken also knows CKM_AES_CCM, but not on its database token.)
        foreach (ulong mechanism in new[] { CKM_AES_GCM, CKM_CHACHA20_POLY1305 })
        {
            var direct = Direct.MechanismInfo(_directSlot, mechanism);
            Assert.That(direct.Flags & CKF_MESSAGE_ENCRYPT, Is.Not.Zero, "softoken lists message encryption");
            var target = _target.MechanismInfo(_slot, mechanism);
            if (Hidden(mechanism))
            {
                Assert.That(target.Rv, Is.EqualTo(0x70UL), $"{name}: 0x{mechanism:x} hidden");
                Assert.That(_target.MechanismList(_slot), Does.Not.Contain(mechanism), $"{name}: 0x{mechanism:x} not listed");
                continue;
            }
            Assert.That(_target.MechanismList(_slot), Does.Contain(mechanism), $"{name}: 0x{mechanism:x} listed");
            Assert.That(target, Is.EqualTo(direct), $"{name}: 0x{mechanism:x}");
        }
    }

    /// <summary>
    /// Softoken shows a 2.40 library through its 2.40 function list (C_GetFunctionList): Cryptoki
    /// 2.40, and mechanism flags without CKF_MESSAGE_*. Our module's 2.40 list does the same, its
    /// 3.0 list shows what the backend's 3.0 list says.
    /// </summary>
    [Test]
    public void The240ListShowsA240Library()
    {
        if (_stack.IsDirect || _stack.No30Interface) return;
        var direct240 = Module3.Load(SoftokenDb.Module, list240: true);
        var target240 = Module3.Load(_stack.ModulePath, list240: true);
        Assert.That(direct240.Has30 || target240.Has30, Is.False);
        Assert.That(direct240.CryptokiVersion(), Is.EqualTo((CKR_OK, (byte)2, (byte)40)), "softoken's 2.40 list");
        Assert.That(Direct.CryptokiVersion(), Is.EqualTo((CKR_OK, (byte)3, (byte)0)), "softoken's 3.0 list");
        Assert.That(target240.CryptokiVersion(), Is.EqualTo(direct240.CryptokiVersion()), $"{name}: 2.40 list");
        if (Knows30Calls)
            Assert.That(_target.CryptokiVersion(), Is.EqualTo(Direct.CryptokiVersion()), $"{name}: 3.0 list");
        foreach (ulong mechanism in new[] { CKM_AES_GCM, CKM_CHACHA20_POLY1305 })
        {
            var direct = direct240.MechanismInfo(_directSlot, mechanism);
            Assert.That(direct.Flags & 0x3e, Is.Zero, "softoken's 2.40 list: no message flags");
            if (Hidden(mechanism)) continue;
            Assert.That(target240.MechanismInfo(_slot, mechanism), Is.EqualTo(direct), $"{name}: 0x{mechanism:x} through the 2.40 list");
        }
    }

    [Test]
    public void AParameterOfAnotherSizeIsRefusedBeforeItTravels()
    {
        if (!Carries30) { AssertNot30Everywhere(); return; }
        var (direct, target) = Both(CKK_AES, AesKey, (m, session, key) =>
        {
            Assert.That(m.MessageEncryptInit(session, CKM_AES_GCM, key), Is.EqualTo(CKR_OK));
            using var parameters = MessageParams.Gcm(new byte[12], 0, MessageParams.CKG_GENERATE_RANDOM, 128);
            using var output = new GuardedBuffer(Plaintext.Length);
            ulong length = (ulong)Plaintext.Length;
            ulong rv = m.CryptMessage(true, session, parameters.Pointer, parameters.Length - 8, Aad, Plaintext, output.Pointer, ref length);
            m.MessageEncryptFinal(session);
            return rv;
        });
        Assert.That(direct, Is.EqualTo(CKR_ARGUMENTS_BAD), "softoken");
        // Documented difference: the module cannot read a CK_GCM_MESSAGE_PARAMS of 40 bytes safely, so
        // it refuses the call itself with CKR_MECHANISM_PARAM_INVALID and a log line.
        Assert.That(target, Is.EqualTo(_stack.IsDirect ? CKR_ARGUMENTS_BAD : CKR_MECHANISM_PARAM_INVALID), name);
    }

    /// <summary>For stacks without message encryption: C_MessageEncryptInit is answered as documented.</summary>
    private void AssertNot30Everywhere()
    {
        if (_stack.No30Interface)
        {
            Assert.That(_target.Has30, Is.False, $"{name}: no 3.0 interface");
            return;
        }
        if (Knows30Calls)
        {
            var (_, v1) = Both(CKK_AES, AesKey, (m, session, key) => m.MessageEncryptInit(session, CKM_AES_GCM, key));
            Assert.That(v1, Is.EqualTo(CKR_MECHANISM_PARAM_INVALID), $"{name}: CKM_AES_GCM without CK_GCM_PARAMS over version 1");
            return;
        }
        // p11-kit 0.24's protocol (version 0) has no 3.0 calls: the module answers for it, as p11-kit's
        // own client of that version does.
        var (_, target) = Both(CKK_AES, AesKey, (m, session, key) => m.MessageEncryptInit(session, CKM_AES_GCM, key));
        Assert.That(target, Is.EqualTo(CKR_FUNCTION_NOT_SUPPORTED), $"{name}: C_MessageEncryptInit over protocol version 0");
    }

    // ---- interfaces -------------------------------------------------------------------------------------------

    [Test]
    public void InterfacesAreTheStandardOnesWithoutForkSafety()
    {
        if (_stack.IsDirect || _stack.No30Interface) return;
        var softoken = Module3.InterfaceList(SoftokenDb.Module);
        Assert.That(softoken.Select(i => i.Name), Is.EqualTo(new[] { "PKCS 11", "PKCS 11", "Vendor NSS Module Interface", "Vendor NSS FIPS Interface" }));
        Assert.That(softoken.Select(i => i.Flags), Has.All.EqualTo(CKF_INTERFACE_FORK_SAFE), "softoken: fork-safe");
        // Ours: softoken's standard interfaces (the vendor ones name functions no wire carries), and
        // without CKF_INTERFACE_FORK_SAFE, which cannot hold for a module whose sessions live in a
        // broker connection that a forked child does not share.
        var ours = Module3.InterfaceList(_stack.ModulePath);
        var expected = softoken.Where(i => i.Name == "PKCS 11").Select(i => (i.Name, i.Major, i.Minor, i.Flags & ~CKF_INTERFACE_FORK_SAFE));
        Assert.That(ours, Is.EqualTo(expected));
        Assert.That(Module3.GetInterface(_stack.ModulePath, "PKCS 11", null, CKF_INTERFACE_FORK_SAFE).Rv, Is.EqualTo(CKR_ARGUMENTS_BAD),
            "no fork-safe interface on request");
        Assert.That(Module3.GetInterface(SoftokenDb.Module, "PKCS 11", null, CKF_INTERFACE_FORK_SAFE).Rv, Is.EqualTo(CKR_OK));
        Assert.That(Module3.GetInterface(_stack.ModulePath, "Vendor NSS Module Interface", null, 0).Rv, Is.EqualTo(CKR_ARGUMENTS_BAD));
        var byDefault = Module3.GetInterface(_stack.ModulePath, null, null, 0);
        Assert.That((byDefault.Rv, byDefault.Major, byDefault.Minor), Is.EqualTo((CKR_OK, (byte)3, (byte)0)), "the default is 3.0, as softoken's");
    }
}
