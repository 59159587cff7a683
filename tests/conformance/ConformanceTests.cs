using System.Runtime.InteropServices;
using System.Security.Cryptography;
using System.Text;
using System.Text.RegularExpressions;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;
using LL = Net.Pkcs11Interop.LowLevelAPI80;

namespace P11Proxy.Conformance;

/// <summary>Every scenario runs against one target and is compared with the token loaded directly:
/// SoftHSM's, and (fixtures "softoken/...") NSS softoken's.
/// p11proxy.so has one global state per process, so targets run one after another: a fixture per
/// target, initialised in OneTimeSetUp and finalised in OneTimeTearDown.</summary>
[TestFixtureSource(typeof(Target), nameof(Target.Names))]
[TestFixtureSource(typeof(Target), nameof(Target.SoftokenNames))]
[NonParallelizable]
public sealed class Conformance(string name)
{
    private readonly Target T = new(name);
    private ISlot D => T.ReferenceSlot;
    private string Tag => $"{T.Name}-{TestContext.CurrentContext.Test.MethodName}-{Guid.NewGuid():N}";

    [OneTimeSetUp]
    public void Start() => T.Start();

    [OneTimeTearDown]
    public void Stop() => T.Dispose();

    // ---------------------------------------------------------------- slots, tokens, mechanisms

    private static string NoSlotId(string s) => Regex.Replace(s, "0x[0-9a-fA-F]+", "0x?").Trim();

    [Test]
    public void SlotAndTokenInfo()
    {
        var d = D.GetSlotInfo();
        var t = T.Slot.GetSlotInfo();
        // SoftHSM's slot description carries its own slot id, which differs per token directory.
        Assert.That(NoSlotId(t.SlotDescription), Is.EqualTo(NoSlotId(d.SlotDescription)), "slot description");
        Assert.That(t.ManufacturerId, Is.EqualTo(d.ManufacturerId), "slot manufacturer");
        Assert.That(t.SlotFlags.Flags, Is.EqualTo(d.SlotFlags.Flags), "slot flags");
        Assert.That(t.HardwareVersion, Is.EqualTo(d.HardwareVersion), "slot hardware version");
        Assert.That(t.FirmwareVersion, Is.EqualTo(d.FirmwareVersion), "slot firmware version");

        var dt = D.GetTokenInfo();
        var tt = T.Slot.GetTokenInfo();
        Assert.That(tt.Label, Is.EqualTo(dt.Label), "token label");
        Assert.That(tt.Label.Trim(), Is.EqualTo(Paths.TokenLabel));
        Assert.That(tt.ManufacturerId, Is.EqualTo(dt.ManufacturerId), "token manufacturer");
        Assert.That(tt.Model, Is.EqualTo(dt.Model), "token model");
        Assert.That(tt.TokenFlags.Flags, Is.EqualTo(dt.TokenFlags.Flags), "token flags");
        Assert.That(tt.MaxPinLen, Is.EqualTo(dt.MaxPinLen), "max PIN length");
        Assert.That(tt.MinPinLen, Is.EqualTo(dt.MinPinLen), "min PIN length");
        Assert.That(tt.HardwareVersion, Is.EqualTo(dt.HardwareVersion), "token hardware version");
        Assert.That(tt.FirmwareVersion, Is.EqualTo(dt.FirmwareVersion), "token firmware version");
        Assert.That(tt.SerialNumber.Trim(), Is.Not.Empty, "serial number");
    }

    [Test]
    public void MechanismList()
    {
        var direct = D.GetMechanismList().Select(m => (ulong)m).ToHashSet();
        var target = T.Slot.GetMechanismList().Select(m => (ulong)m).ToList();
        Assert.That(target, Is.Unique, "no mechanism listed twice");
        if (T.Protocol0)
        {
            // p11-kit 0.24 (protocol version 0) cannot carry these mechanisms' parameters; its client
            // hides them, and a protocol-0 path must hide exactly the same ones.
            var expected = direct.Where(m => !T.Hidden.Contains(m));
            Assert.That(target, Is.EquivalentTo(expected), "protocol 0: the token's list minus what p11-kit 0.24 cannot carry");
            Assert.That(target, Does.Not.Contain((ulong)CKM.CKM_AES_CBC));
            Assert.That(target, Does.Not.Contain((ulong)CKM.CKM_AES_GCM));
            Assert.That(target, Does.Not.Contain((ulong)CKM.CKM_SHA256_RSA_PKCS_PSS));
            H.InSession(T.Slot, s =>
            {
                var key = H.ImportAes(s, H.Seq(32), Tag);
                var e = H.Fails(CKR.CKR_MECHANISM_INVALID, () => s.Encrypt(H.Mech(CKM.CKM_AES_CBC, new byte[16]), key, H.Seq(32)),
                    "protocol 0: C_EncryptInit with CKM_AES_CBC");
                Assert.That(e.Method, Is.EqualTo("C_EncryptInit"));
                return 0;
            });
        }
        else if (T.Hidden.Count > 0)
        {
            // Protocol 1 (p11-kit 0.25.0-0.25.5 tables): more is carried, but not everything.
            Assert.That(target, Is.EquivalentTo(direct.Where(m => !T.Hidden.Contains(m))),
                "protocol 1: the token's list minus what p11-kit 0.25 cannot carry");
            Assert.That(target, Does.Contain((ulong)CKM.CKM_AES_GCM));
            Assert.That(target, Does.Not.Contain((ulong)CKM.CKM_AES_KEY_WRAP));
        }
        else
        {
            Assert.That(target, Is.EquivalentTo(direct), "the same mechanisms as the token directly");
            Assert.That(target, Does.Contain((ulong)CKM.CKM_AES_CBC));
            Assert.That(target, Does.Contain((ulong)CKM.CKM_AES_GCM));
            Assert.That(target, Does.Contain((ulong)CKM.CKM_SHA256_RSA_PKCS_PSS));
        }
    }

    [Test]
    public void MechanismInfo()
    {
        var list = T.Slot.GetMechanismList();
        Assert.That(list, Is.Not.Empty);
        var diffs = new List<string>();
        foreach (var m in list)
        {
            var d = D.GetMechanismInfo(m);
            var t = T.Slot.GetMechanismInfo(m);
            // p11-kit server 0.24.1 adds a stray bit 0x2 (uninitialised memory) to the flags of SoftHSM's
            // CKM_AES_ECB and CKM_DES3_ECB, and p11-kit-client.so passes it on. Through p11proxy.so's 2.40
            // function list it does not show: that list drops the CKF_MESSAGE_* bits (0x2 is
            // CKF_MESSAGE_ENCRYPT), which no 2.40 function can use, as NSS softoken's 2.40 list does.
            ulong tFlags = t.MechanismFlags.Flags;
            if (d.MinKeySize != t.MinKeySize || d.MaxKeySize != t.MaxKeySize || d.MechanismFlags.Flags != tFlags)
                diffs.Add($"0x{(ulong)m:X} {m}: direct ({d.MinKeySize},{d.MaxKeySize},0x{d.MechanismFlags.Flags:X}) " +
                          $"target ({t.MinKeySize},{t.MaxKeySize},0x{t.MechanismFlags.Flags:X})");
        }
        Assert.That(diffs, Is.Empty, "C_GetMechanismInfo differs from direct");
    }

    // ---------------------------------------------------------------- RSA

    [Test]
    public void RsaKeyPairGeneration()
    {
        var tag = Tag;
        (ulong bits, int modLen, byte[] exp, ulong keyType, bool sensitive, bool priv) Gen(ISlot slot) => H.InSession(slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, tag);
            // softoken keeps no CKA_MODULUS_BITS on a generated public key (CK_UNAVAILABLE_INFORMATION),
            // directly as through every stack: 0 stands for it.
            ulong bits = T.Softoken ? H.ULongOrZero(s, pub, CKA.CKA_MODULUS_BITS) : H.ULong(s, pub, CKA.CKA_MODULUS_BITS);
            return (bits, H.Bytes(s, pub, CKA.CKA_MODULUS).Length,
                    H.Bytes(s, pub, CKA.CKA_PUBLIC_EXPONENT), H.ULong(s, prv, CKA.CKA_KEY_TYPE),
                    H.Bool(s, prv, CKA.CKA_SENSITIVE), H.Bool(s, prv, CKA.CKA_PRIVATE));
        });
        var d = Gen(D);
        var t = Gen(T.Slot);
        Assert.That(t.bits, Is.EqualTo(T.Softoken ? 0UL : 2048UL));
        Assert.That(t.modLen, Is.EqualTo(256));
        Assert.That(t.exp, Is.EqualTo(new byte[] { 1, 0, 1 }));
        Assert.That(t.keyType, Is.EqualTo((ulong)CKK.CKK_RSA));
        string Show((ulong bits, int modLen, byte[] exp, ulong keyType, bool sensitive, bool priv) x) =>
            $"{x.bits} {x.modLen} {Convert.ToHexString(x.exp)} {x.keyType} {x.sensitive} {x.priv}";
        Assert.That(Show(t), Is.EqualTo(Show(d)), "as direct");
    }

    [Test]
    public void RsaPkcs1SignVerify()
    {
        var data = Encoding.UTF8.GetBytes("p11proxy conformance: RSA PKCS#1 v1.5");
        H.InSession(T.Slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, Tag);
            foreach (var (m, hash) in new[] { (CKM.CKM_SHA256_RSA_PKCS, HashAlgorithmName.SHA256), (CKM.CKM_SHA1_RSA_PKCS, HashAlgorithmName.SHA1) })
            {
                var sig = s.Sign(H.Mech(m), prv, data);
                Assert.That(sig, Has.Length.EqualTo(256));
                s.Verify(H.Mech(m), pub, data, sig, out bool ok);
                Assert.That(ok, Is.True, $"{m} verifies on the token");
                using var rsa = H.DotNetRsa(s, pub);
                Assert.That(rsa.VerifyData(data, sig, hash, RSASignaturePadding.Pkcs1), Is.True, $"{m} verifies with .NET");
                // PKCS#1 v1.5 is deterministic: the token's signature equals a raw CKM_RSA_PKCS over the DigestInfo.
                var bad = (byte[])sig.Clone();
                bad[10] ^= 1;
                Assert.That(VerifyOrInvalid(s, H.Mech(m), pub, data, bad), Is.False, "a corrupted signature is rejected");
            }
            var digestInfo = Convert.FromHexString("3031300d060960864801650304020105000420").Concat(SHA256.HashData(data)).ToArray();
            var raw = s.Sign(H.Mech(CKM.CKM_RSA_PKCS), prv, digestInfo);
            Assert.That(raw, Is.EqualTo(s.Sign(H.Mech(CKM.CKM_SHA256_RSA_PKCS), prv, data)), "CKM_RSA_PKCS over DigestInfo = CKM_SHA256_RSA_PKCS");
            return 0;
        });
    }

    private bool VerifyOrInvalid(ISession s, IMechanism m, IObjectHandle key, byte[] data, byte[] sig)
    {
        // Pkcs11Interop maps CKR_SIGNATURE_INVALID to false; CKR_SIGNATURE_LEN_RANGE is also a rejection.
        // softoken refuses a wrong MAC with whatever NSPR's per-thread last error was (CKR_DEVICE_ERROR
        // on a fresh thread): any error from C_Verify is its rejection.
        try { s.Verify(m, key, data, sig, out bool ok); return ok; }
        catch (Pkcs11Exception e) when (e.RV == CKR.CKR_SIGNATURE_LEN_RANGE || (T.Softoken && e.Method == "C_Verify")) { return false; }
    }

    private static IMechanismParams PssParams() =>
        H.Params.CreateCkRsaPkcsPssParams((ulong)CKM.CKM_SHA256, (ulong)CKG.CKG_MGF1_SHA256, 32);

    [Test]
    public void RsaPssOverDigest()
    {
        var data = Encoding.UTF8.GetBytes("p11proxy conformance: RSA-PSS");
        var hash = SHA256.HashData(data);
        // CKM_RSA_PKCS_PSS with CK_RSA_PKCS_PSS_PARAMS is one of the few parametrised mechanisms
        // p11-kit 0.24 carries, so it works on every target.
        H.InSession(T.Slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, Tag);
            var sig = s.Sign(H.Mech(CKM.CKM_RSA_PKCS_PSS, PssParams()), prv, hash);
            Assert.That(sig, Has.Length.EqualTo(256));
            s.Verify(H.Mech(CKM.CKM_RSA_PKCS_PSS, PssParams()), pub, hash, sig, out bool ok);
            Assert.That(ok, Is.True, "PSS verifies on the token");
            using var rsa = H.DotNetRsa(s, pub);
            Assert.That(rsa.VerifyHash(hash, sig, HashAlgorithmName.SHA256, RSASignaturePadding.Pss), Is.True, "PSS verifies with .NET");
            var sig2 = s.Sign(H.Mech(CKM.CKM_RSA_PKCS_PSS, PssParams()), prv, hash);
            Assert.That(sig2, Is.Not.EqualTo(sig), "PSS with a 32-byte salt is randomised");
            return 0;
        });
    }

    [Test]
    public void RsaPssSha256()
    {
        var data = Encoding.UTF8.GetBytes("p11proxy conformance: SHA256-RSA-PKCS-PSS");
        H.InSession(T.Slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, Tag);
            if (T.Protocol0)
            {
                // p11-kit 0.24's mechanism table carries PSS parameters only for CKM_RSA_PKCS_PSS, not
                // for CKM_SHA256_RSA_PKCS_PSS: the mechanism is hidden and refused at C_SignInit.
                var e = H.Fails(CKR.CKR_MECHANISM_INVALID, () => s.Sign(H.Mech(CKM.CKM_SHA256_RSA_PKCS_PSS, PssParams()), prv, data),
                    "protocol 0: CKM_SHA256_RSA_PKCS_PSS");
                Assert.That(e.Method, Is.EqualTo("C_SignInit"));
                return 0;
            }
            var sig = s.Sign(H.Mech(CKM.CKM_SHA256_RSA_PKCS_PSS, PssParams()), prv, data);
            s.Verify(H.Mech(CKM.CKM_SHA256_RSA_PKCS_PSS, PssParams()), pub, data, sig, out bool ok);
            Assert.That(ok, Is.True, "verifies on the token");
            using var rsa = H.DotNetRsa(s, pub);
            Assert.That(rsa.VerifyData(data, sig, HashAlgorithmName.SHA256, RSASignaturePadding.Pss), Is.True, "verifies with .NET");
            return 0;
        });
    }

    [Test]
    public void RsaOaepRoundTrip()
    {
        var plain = Encoding.UTF8.GetBytes("p11proxy conformance: OAEP secret");
        IMechanism Oaep() => H.Mech(CKM.CKM_RSA_PKCS_OAEP,
            H.Params.CreateCkRsaPkcsOaepParams((ulong)CKM.CKM_SHA_1, (ulong)CKG.CKG_MGF1_SHA1, (ulong)CKZ.CKZ_DATA_SPECIFIED, null));
        H.InSession(T.Slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, Tag);
            var ct = s.Encrypt(Oaep(), pub, plain);
            Assert.That(ct, Has.Length.EqualTo(256));
            Assert.That(s.Decrypt(Oaep(), prv, ct), Is.EqualTo(plain), "token encrypt, token decrypt");
            using var rsa = H.DotNetRsa(s, pub);
            var ct2 = rsa.Encrypt(plain, RSAEncryptionPadding.OaepSHA1);
            Assert.That(s.Decrypt(Oaep(), prv, ct2), Is.EqualTo(plain), ".NET encrypt, token decrypt");
            return 0;
        });
    }

    // ---------------------------------------------------------------- EC

    [TestCase("P-256")]
    [TestCase("P-384")]
    public void EcdsaSignVerify(string curveName)
    {
        var (oid, curve, size) = curveName == "P-256" ? (H.P256Oid, ECCurve.NamedCurves.nistP256, 32) : (H.P384Oid, ECCurve.NamedCurves.nistP384, 48);
        var data = Encoding.UTF8.GetBytes($"p11proxy conformance: ECDSA {curveName}");
        var hash = SHA256.HashData(data);
        int Run(ISlot slot) => H.InSession(slot, s =>
        {
            var (pub, prv) = H.EcKeyPair(s, oid, Tag);
            Assert.That(H.Bytes(s, pub, CKA.CKA_EC_PARAMS), Is.EqualTo(oid));
            var point = H.Bytes(s, pub, CKA.CKA_EC_POINT);
            var sig = s.Sign(H.Mech(CKM.CKM_ECDSA), prv, hash);
            Assert.That(sig, Has.Length.EqualTo(2 * size), "r||s");
            s.Verify(H.Mech(CKM.CKM_ECDSA), pub, hash, sig, out bool ok);
            Assert.That(ok, Is.True, "verifies on the token");
            using var ec = H.DotNetEcdsa(point, curve);
            Assert.That(ec.VerifyHash(hash, sig), Is.True, "verifies with .NET from CKA_EC_POINT");
            var bad = (byte[])sig.Clone();
            bad[3] ^= 0x40;
            Assert.That(VerifyOrInvalid(s, H.Mech(CKM.CKM_ECDSA), pub, hash, bad), Is.False);
            return point.Length;
        });
        Assert.That(Run(T.Slot), Is.EqualTo(Run(D)), "CKA_EC_POINT encoding length as direct");
    }

    [Test]
    public void Ecdh1Derive()
    {
        var aesTemplate = () => H.Attrs((CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), (CKA.CKA_KEY_TYPE, CKK.CKK_AES), (CKA.CKA_VALUE_LEN, 32UL),
            (CKA.CKA_TOKEN, false), (CKA.CKA_ENCRYPT, true), (CKA.CKA_DECRYPT, true), (CKA.CKA_SENSITIVE, false), (CKA.CKA_EXTRACTABLE, true));
        H.InSession(T.Slot, s =>
        {
            var (pubA, prvA) = H.EcKeyPair(s, H.P256Oid, Tag, derive: true);
            var (pubB, prvB) = H.EcKeyPair(s, H.P256Oid, Tag, derive: true);
            var pointA = H.EcPointRaw(H.Bytes(s, pubA, CKA.CKA_EC_POINT));
            var pointB = H.EcPointRaw(H.Bytes(s, pubB, CKA.CKA_EC_POINT));
            IMechanism Ecdh(byte[] other) => H.Mech(CKM.CKM_ECDH1_DERIVE, H.Params.CreateCkEcdh1DeriveParams((ulong)CKD.CKD_NULL, null, other));
            if (T.Protocol0)
            {
                // p11-kit 0.24 cannot carry CK_ECDH1_DERIVE_PARAMS: hidden and refused.
                H.Fails(CKR.CKR_MECHANISM_INVALID, () => s.DeriveKey(Ecdh(pointB), prvA, aesTemplate()), "protocol 0: CKM_ECDH1_DERIVE");
                return 0;
            }
            var kAB = s.DeriveKey(Ecdh(pointB), prvA, aesTemplate());
            var kBA = s.DeriveKey(Ecdh(pointA), prvB, aesTemplate());
            var block = H.Seq(32, 5);
            var c1 = s.Encrypt(H.Mech(CKM.CKM_AES_ECB), kAB, block);
            var c2 = s.Encrypt(H.Mech(CKM.CKM_AES_ECB), kBA, block);
            Assert.That(c1, Is.EqualTo(c2), "both sides derived the same AES key");
            Assert.That(H.Bytes(s, kAB, CKA.CKA_VALUE), Is.EqualTo(H.Bytes(s, kBA, CKA.CKA_VALUE)));
            Assert.That(H.Bytes(s, kAB, CKA.CKA_VALUE), Has.Length.EqualTo(32));
            return 0;
        });
    }

    // ---------------------------------------------------------------- AES

    [Test]
    public void AesKeyGeneration()
    {
        H.InSession(T.Slot, s =>
        {
            var key = s.GenerateKey(H.Mech(CKM.CKM_AES_KEY_GEN), H.Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, Tag),
                (CKA.CKA_VALUE_LEN, 32UL), (CKA.CKA_ENCRYPT, true), (CKA.CKA_DECRYPT, true), (CKA.CKA_SENSITIVE, false), (CKA.CKA_EXTRACTABLE, true)));
            Assert.That(H.ULong(s, key, CKA.CKA_KEY_TYPE), Is.EqualTo((ulong)CKK.CKK_AES));
            Assert.That(H.ULong(s, key, CKA.CKA_VALUE_LEN), Is.EqualTo(32UL));
            var value = H.Bytes(s, key, CKA.CKA_VALUE);
            Assert.That(value, Has.Length.EqualTo(32));
            var block = H.Seq(64, 9);
            using var aes = Aes.Create();
            aes.Key = value;
            Assert.That(s.Encrypt(H.Mech(CKM.CKM_AES_ECB), key, block), Is.EqualTo(aes.EncryptEcb(block, PaddingMode.None)), "ECB with the generated key as .NET");
            return 0;
        });
    }

    private static readonly byte[] FixedKey = Convert.FromHexString("603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4");
    private static readonly byte[] Iv = Convert.FromHexString("000102030405060708090a0b0c0d0e0f");

    /// <summary>Runs an AES scenario with the same fixed key on direct and on the target and returns both outputs.</summary>
    private (byte[] direct, byte[] target) AesBoth(Func<ISession, IObjectHandle, byte[]> f)
    {
        var tag = Tag;
        var d = H.InSession(D, s => f(s, H.ImportAes(s, FixedKey, tag)));
        var t = H.InSession(T.Slot, s => f(s, H.ImportAes(s, FixedKey, tag)));
        return (d, t);
    }

    [Test]
    public void AesEcb()
    {
        var plain = H.Seq(80, 2);
        var (d, t) = AesBoth((s, k) =>
        {
            var ct = s.Encrypt(H.Mech(CKM.CKM_AES_ECB), k, plain);
            Assert.That(s.Decrypt(H.Mech(CKM.CKM_AES_ECB), k, ct), Is.EqualTo(plain));
            return ct;
        });
        using var aes = Aes.Create();
        aes.Key = FixedKey;
        Assert.That(t, Is.EqualTo(aes.EncryptEcb(plain, PaddingMode.None)), ".NET");
        Assert.That(t, Is.EqualTo(d), "direct");
    }

    /// <summary>A mechanism p11-kit 0.24 cannot carry: on protocol-0 targets it must be refused at
    /// its *Init with CKR_MECHANISM_INVALID; elsewhere it must give what direct gives.</summary>
    private void Parametrised(Func<ISession, IObjectHandle, byte[]> f, byte[] expected, string what)
    {
        var tag = Tag;
        var d = H.InSession(D, s => f(s, H.ImportAes(s, FixedKey, tag)));
        Assert.That(d, Is.EqualTo(expected), $"{what}: direct as .NET");
        if (T.Protocol0)
        {
            // Protocol 0 (p11-kit 0.24): the parameters cannot be carried; the mechanism is hidden.
            H.InSession(T.Slot, s =>
            {
                var k = H.ImportAes(s, FixedKey, tag);
                H.Fails(CKR.CKR_MECHANISM_INVALID, () => f(s, k), $"protocol 0: {what}");
                return 0;
            });
            return;
        }
        var t = H.InSession(T.Slot, s => f(s, H.ImportAes(s, FixedKey, tag)));
        Assert.That(t, Is.EqualTo(d), $"{what}: as direct");
    }

    [Test]
    public void AesCbc()
    {
        var plain = H.Seq(64, 3);
        using var aes = Aes.Create();
        aes.Key = FixedKey;
        Parametrised((s, k) =>
        {
            var ct = s.Encrypt(H.Mech(CKM.CKM_AES_CBC, Iv), k, plain);
            Assert.That(s.Decrypt(H.Mech(CKM.CKM_AES_CBC, Iv), k, ct), Is.EqualTo(plain));
            return ct;
        }, aes.EncryptCbc(plain, Iv, PaddingMode.None), "CKM_AES_CBC");
    }

    [Test]
    public void AesCbcPadMultiPart()
    {
        var plain = H.Seq(1000, 4);
        using var aes = Aes.Create();
        aes.Key = FixedKey;
        Parametrised((s, k) =>
        {
            // Streams with a 37-byte buffer: C_EncryptUpdate many times, then C_EncryptFinal. softoken
            // gives an update more output than its input when blocks it held back complete (which
            // Pkcs11Interop's streaming, sizing the output as the part, loses), and refuses CBC-PAD
            // decryption parts that are not whole blocks (CKR_ENCRYPTED_DATA_LEN_RANGE), directly as
            // through every stack: it streams in whole blocks, 48 bytes.
            int part = T.Softoken ? 48 : 37;
            var ct = H.Through((i, o) => { s.Encrypt(H.Mech(CKM.CKM_AES_CBC_PAD, Iv), k, i, o, part); return 0; }, plain);
            var back = H.Through((i, o) => { s.Decrypt(H.Mech(CKM.CKM_AES_CBC_PAD, Iv), k, i, o, T.Softoken ? 48 : 53); return 0; }, ct);
            Assert.That(back, Is.EqualTo(plain), "multi-part decrypt");
            Assert.That(s.Encrypt(H.Mech(CKM.CKM_AES_CBC_PAD, Iv), k, plain), Is.EqualTo(ct), "single-part = multi-part");
            return ct;
        }, aes.EncryptCbc(plain, Iv, PaddingMode.PKCS7), "CKM_AES_CBC_PAD");
    }

    [Test]
    public void AesCtr()
    {
        var plain = H.Seq(100, 5);
        var counter = Convert.FromHexString("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff");
        Parametrised((s, k) =>
        {
            IMechanism M() => H.Mech(CKM.CKM_AES_CTR, H.Params.CreateCkAesCtrParams(128, counter));
            var ct = s.Encrypt(M(), k, plain);
            Assert.That(s.Decrypt(M(), k, ct), Is.EqualTo(plain));
            return ct;
        }, H.AesCtr(FixedKey, counter, plain), "CKM_AES_CTR");
    }

    [Test]
    public void AesGcm()
    {
        var plain = H.Seq(77, 6);
        var nonce = H.Seq(12, 7);
        var aad = Encoding.UTF8.GetBytes("associated data");
        var expected = new byte[plain.Length + 16];
        using (var g = new System.Security.Cryptography.AesGcm(FixedKey, 16))
            g.Encrypt(nonce, plain, expected.AsSpan(0, plain.Length), expected.AsSpan(plain.Length), aad);
        if (T.Softoken)
        {
            // softoken answers the size query of a one-shot GCM C_Encrypt with the plaintext's length,
            // without room for the tag, then refuses a buffer of that size: Pkcs11Interop's
            // C_Encrypt fails with CKR_BUFFER_TOO_SMALL, directly as through the stack.
            string Outcome(ISlot slot) => H.InSession(slot, s =>
            {
                var k = H.ImportAes(s, FixedKey, Tag);
                var e = Assert.Throws<Pkcs11Exception>(() => s.Encrypt(H.Mech(CKM.CKM_AES_GCM, H.Params.CreateCkGcmParams(nonce, 96, aad, 128)), k, plain))!;
                return $"{e.Method} {e.RV}";
            });
            Assert.That(Outcome(D), Is.EqualTo("C_Encrypt CKR_BUFFER_TOO_SMALL"), "softoken directly");
            // Where GCM cannot be carried (protocol 0) it is refused at its start, as anywhere.
            Assert.That(Outcome(T.Slot), Is.EqualTo(T.Hidden.Contains((ulong)CKM.CKM_AES_GCM) ? "C_EncryptInit CKR_MECHANISM_INVALID" : Outcome(D)),
                "as directly");
            return;
        }
        Parametrised((s, k) =>
        {
            IMechanism M() => H.Mech(CKM.CKM_AES_GCM, H.Params.CreateCkGcmParams(nonce, 96, aad, 128));
            var ct = s.Encrypt(M(), k, plain);
            Assert.That(s.Decrypt(M(), k, ct), Is.EqualTo(plain));
            var bad = (byte[])ct.Clone();
            bad[^1] ^= 1;
            var e = Assert.Throws<Pkcs11Exception>(() => s.Decrypt(M(), k, bad))!;
            Assert.That(e.RV, Is.AnyOf(CKR.CKR_ENCRYPTED_DATA_INVALID, CKR.CKR_GENERAL_ERROR), "a corrupted tag is refused");
            return ct;
        }, expected, "CKM_AES_GCM");
    }

    [Test]
    public void AesKeyWrap()
    {
        var tag = Tag;
        var wrapMech = D.GetMechanismList().Contains(CKM.CKM_AES_KEY_WRAP) ? CKM.CKM_AES_KEY_WRAP : CKM.CKM_AES_KEY_WRAP_PAD;
        Assert.That(D.GetMechanismList(), Does.Contain(wrapMech), "the token lists an AES key wrap mechanism");
        var plain = H.Seq(48, 8);
        byte[] Run(ISession s)
        {
            var kek = s.GenerateKey(H.Mech(CKM.CKM_AES_KEY_GEN), H.Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, tag),
                (CKA.CKA_VALUE_LEN, 32UL), (CKA.CKA_WRAP, true), (CKA.CKA_UNWRAP, true)));
            var key = s.GenerateKey(H.Mech(CKM.CKM_AES_KEY_GEN), H.Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, tag),
                (CKA.CKA_VALUE_LEN, 32UL), (CKA.CKA_ENCRYPT, true), (CKA.CKA_DECRYPT, true), (CKA.CKA_EXTRACTABLE, true)));
            var ct = s.Encrypt(H.Mech(CKM.CKM_AES_ECB), key, plain);
            var wrapped = s.WrapKey(H.Mech(wrapMech), kek, key);
            Assert.That(wrapped.Length, Is.EqualTo(40), "32-byte key wrapped = 40 bytes");
            var unwrapped = s.UnwrapKey(H.Mech(wrapMech), kek, wrapped, H.Attrs((CKA.CKA_CLASS, CKO.CKO_SECRET_KEY),
                (CKA.CKA_KEY_TYPE, CKK.CKK_AES), (CKA.CKA_TOKEN, false), (CKA.CKA_DECRYPT, true), (CKA.CKA_LABEL, tag + "-unwrapped")));
            Assert.That(s.Decrypt(H.Mech(CKM.CKM_AES_ECB), unwrapped, ct), Is.EqualTo(plain), "the unwrapped key decrypts");
            return wrapped;
        }
        H.InSession(D, Run);
        if (T.Hidden.Contains((ulong)wrapMech))
        {
            // The AES key wrap mechanisms are in no p11-kit table before 0.25.6: hidden and refused.
            H.InSession(T.Slot, s =>
            {
                H.Fails(CKR.CKR_MECHANISM_INVALID, () => Run(s), $"protocol {(T.Protocol0 ? 0 : 1)}: {wrapMech}");
                return 0;
            });
            return;
        }
        try { H.InSession(T.Slot, Run); }
        catch (Pkcs11Exception) { TestContext.Out.WriteLine(T.ServerLog); throw; }
    }

    // ---------------------------------------------------------------- digests and HMAC

    [TestCase(CKM.CKM_SHA_1)]
    [TestCase(CKM.CKM_SHA256)]
    [TestCase(CKM.CKM_SHA384)]
    [TestCase(CKM.CKM_SHA512)]
    public void Digest(CKM mech)
    {
        var data = H.Seq(10000, 11);
        byte[] expected = mech switch
        {
            CKM.CKM_SHA_1 => SHA1.HashData(data),
            CKM.CKM_SHA256 => SHA256.HashData(data),
            CKM.CKM_SHA384 => SHA384.HashData(data),
            _ => SHA512.HashData(data),
        };
        H.InSession(T.Slot, s =>
        {
            Assert.That(s.Digest(H.Mech(mech), data), Is.EqualTo(expected), "single-part");
            using var input = new MemoryStream(data);
            Assert.That(s.Digest(H.Mech(mech), input, 333), Is.EqualTo(expected), "multi-part");
            Assert.That(s.Digest(H.Mech(mech), Array.Empty<byte>()), Is.EqualTo(H.InSession(D, d => d.Digest(H.Mech(mech), Array.Empty<byte>()))), "empty input as direct");
            return 0;
        }, login: false);
    }

    [Test]
    public void HmacSha256()
    {
        var data = Encoding.UTF8.GetBytes("p11proxy conformance: HMAC");
        H.InSession(T.Slot, s =>
        {
            var key = s.GenerateKey(H.Mech(CKM.CKM_GENERIC_SECRET_KEY_GEN), H.Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, Tag),
                (CKA.CKA_VALUE_LEN, 32UL), (CKA.CKA_SIGN, true), (CKA.CKA_VERIFY, true), (CKA.CKA_SENSITIVE, false), (CKA.CKA_EXTRACTABLE, true)));
            var mac = s.Sign(H.Mech(CKM.CKM_SHA256_HMAC), key, data);
            Assert.That(mac, Is.EqualTo(HMACSHA256.HashData(H.Bytes(s, key, CKA.CKA_VALUE), data)), ".NET HMAC");
            s.Verify(H.Mech(CKM.CKM_SHA256_HMAC), key, data, mac, out bool ok);
            Assert.That(ok, Is.True);
            mac[0] ^= 1;
            Assert.That(VerifyOrInvalid(s, H.Mech(CKM.CKM_SHA256_HMAC), key, data, mac), Is.False, "a wrong MAC is rejected");
            return 0;
        });
    }

    // ---------------------------------------------------------------- objects

    private record FindCounts(int ById, int SecretById, int ByLabel, int DataByApp, int DeltaSecret, int DeltaData, int DeltaPub);

    [Test]
    public void FindObjects()
    {
        var tag = Tag;
        var id = Encoding.ASCII.GetBytes(tag);
        FindCounts Run(ISlot slot) => H.InSession(slot, s =>
        {
            int Count(params (CKA, object)[] t) => s.FindAllObjects(H.Attrs(t)).Count;
            int secret0 = Count((CKA.CKA_CLASS, CKO.CKO_SECRET_KEY)), data0 = Count((CKA.CKA_CLASS, CKO.CKO_DATA)),
                pub0 = Count((CKA.CKA_CLASS, CKO.CKO_PUBLIC_KEY));
            for (int i = 0; i < 3; i++)
                s.CreateObject(H.Attrs((CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), (CKA.CKA_KEY_TYPE, CKK.CKK_AES), (CKA.CKA_TOKEN, false),
                    (CKA.CKA_VALUE, H.Seq(16, i)), (CKA.CKA_ID, id), (CKA.CKA_LABEL, i == 0 ? tag : tag + i)));
            s.GenerateKeyPair(H.Mech(CKM.CKM_EC_KEY_PAIR_GEN),
                H.Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_ID, id), (CKA.CKA_LABEL, tag), (CKA.CKA_EC_PARAMS, H.P256Oid)),
                H.Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_ID, id), (CKA.CKA_LABEL, tag + "-priv"), (CKA.CKA_PRIVATE, true)),
                out _, out _);
            for (int i = 0; i < 4; i++)
                // softoken keeps no data objects on its database token (CKR_ATTRIBUTE_VALUE_INVALID): session ones there.
                s.CreateObject(H.Attrs((CKA.CKA_CLASS, CKO.CKO_DATA), (CKA.CKA_TOKEN, i % 2 == 0 && !T.Softoken), (CKA.CKA_APPLICATION, tag),
                    (CKA.CKA_LABEL, tag), (CKA.CKA_VALUE, H.Seq(i + 1))));
            var counts = new FindCounts(
                Count((CKA.CKA_ID, id)),
                Count((CKA.CKA_ID, id), (CKA.CKA_CLASS, CKO.CKO_SECRET_KEY)),
                Count((CKA.CKA_LABEL, tag)),
                Count((CKA.CKA_CLASS, CKO.CKO_DATA), (CKA.CKA_APPLICATION, tag)),
                Count((CKA.CKA_CLASS, CKO.CKO_SECRET_KEY)) - secret0,
                Count((CKA.CKA_CLASS, CKO.CKO_DATA)) - data0,
                Count((CKA.CKA_CLASS, CKO.CKO_PUBLIC_KEY)) - pub0);
            // Token objects outlive the session: remove them.
            foreach (var o in s.FindAllObjects(H.Attrs((CKA.CKA_CLASS, CKO.CKO_DATA), (CKA.CKA_APPLICATION, tag)))) s.DestroyObject(o);
            Assert.That(Count((CKA.CKA_APPLICATION, tag)), Is.Zero);
            return counts;
        });
        var d = Run(D);
        if (!T.Softoken) Assert.That(d, Is.EqualTo(new FindCounts(5, 3, 6, 4, 3, 4, 1)), "direct SoftHSM counts");
        Assert.That(Run(T.Slot), Is.EqualTo(d), "counts as direct");
    }

    [Test]
    public void SetAttributeCopyDestroy()
    {
        var tag = Tag;
        (string label, int afterCopy, int afterDestroy, string copyLabel, byte[] copyValue) Run(ISlot slot) => H.InSession(slot, s =>
        {
            var obj = s.CreateObject(H.Attrs((CKA.CKA_CLASS, CKO.CKO_DATA), (CKA.CKA_TOKEN, false), (CKA.CKA_APPLICATION, tag),
                (CKA.CKA_LABEL, "before"), (CKA.CKA_VALUE, H.Seq(20))));
            s.SetAttributeValue(obj, H.Attrs((CKA.CKA_LABEL, tag + "-renamed")));
            var label = H.Str(s, obj, CKA.CKA_LABEL);
            var copy = s.CopyObject(obj, H.Attrs((CKA.CKA_LABEL, tag + "-copy")));
            Assert.That(copy.ObjectId, Is.Not.EqualTo(obj.ObjectId));
            int afterCopy = s.FindAllObjects(H.Attrs((CKA.CKA_APPLICATION, tag))).Count;
            var copyLabel = H.Str(s, copy, CKA.CKA_LABEL);
            var copyValue = H.Bytes(s, copy, CKA.CKA_VALUE);
            s.DestroyObject(copy);
            int afterDestroy = s.FindAllObjects(H.Attrs((CKA.CKA_APPLICATION, tag))).Count;
            H.Fails(CKR.CKR_OBJECT_HANDLE_INVALID, () => s.GetAttributeValue(copy, [CKA.CKA_LABEL]), "a destroyed object");
            return (label, afterCopy, afterDestroy, copyLabel, copyValue);
        });
        var d = Run(D);
        var t = Run(T.Slot);
        Assert.That(t.label, Is.EqualTo(tag + "-renamed"));
        Assert.That((t.label, t.afterCopy, t.afterDestroy, t.copyLabel), Is.EqualTo((d.label, d.afterCopy, d.afterDestroy, d.copyLabel)));
        Assert.That((t.afterCopy, t.afterDestroy), Is.EqualTo((2, 1)));
        Assert.That(t.copyValue, Is.EqualTo(H.Seq(20)));
    }

    // ---------------------------------------------------------------- low level: sizes and errors

    /// <summary>The low-level library behind a high-level one: the same function list, so session and
    /// object handles from the high-level API are valid. (A second C_GetFunctionList is not the same
    /// thing everywhere: p11-kit-client.so makes a new, uninitialised instance per call.)</summary>
    private static LL.Pkcs11Library LowLevel(IPkcs11Library lib)
    {
        var field = lib.GetType().GetField("_pkcs11Library", System.Reflection.BindingFlags.Instance | System.Reflection.BindingFlags.NonPublic)
            ?? throw new InvalidOperationException("Pkcs11Interop's HighLevelAPI80.Pkcs11Library has no _pkcs11Library field");
        return (LL.Pkcs11Library)field.GetValue(lib)!;
    }

    private IPkcs11Library LibOf(ISlot slot) => ReferenceEquals(slot, D) ? T.ReferenceLib : T.Lib;

    /// <summary>
    /// NSS softoken (3.87) answers C_GetAttributeValue with a buffer too small for a value by writing
    /// the value whole past the buffer's end, and CKR_OK. Where the caller's buffer reaches softoken
    /// (directly, and through p11-kit's server, which passes it on) that scenario would corrupt
    /// memory, so it is not run there; our broker never hands a module a buffer smaller than its
    /// value and answers CKR_BUFFER_TOO_SMALL, as a conforming module does.
    /// </summary>
    private bool SmallBufferReachesSoftoken(ISlot slot) =>
        T.Softoken && (ReferenceEquals(slot, D) || T.Name is "p11kit-server" or "p11kit-remote");

    private sealed record AttrOutcome(CKR Rv, ulong[] Lens);

    private static AttrOutcome GetAttrs(LL.Pkcs11Library ll, ulong session, ulong obj, (CKA type, int bufLen)[] request, out byte[][] values)
    {
        var template = new LL.CK_ATTRIBUTE[request.Length];
        for (int i = 0; i < request.Length; i++)
        {
            template[i].type = (ulong)request[i].type;
            template[i].value = request[i].bufLen < 0 ? IntPtr.Zero : Marshal.AllocHGlobal(Math.Max(1, request[i].bufLen));
            template[i].valueLen = request[i].bufLen < 0 ? 0UL : (ulong)request[i].bufLen;
        }
        try
        {
            var rv = ll.C_GetAttributeValue(session, obj, template, (ulong)template.Length);
            values = new byte[request.Length][];
            for (int i = 0; i < request.Length; i++)
            {
                values[i] = [];
                if (template[i].value != IntPtr.Zero && template[i].valueLen != ulong.MaxValue && template[i].valueLen <= (ulong)request[i].bufLen)
                {
                    values[i] = new byte[template[i].valueLen];
                    Marshal.Copy(template[i].value, values[i], 0, values[i].Length);
                }
            }
            return new AttrOutcome((CKR)rv, template.Select(a => a.valueLen).ToArray());
        }
        finally
        {
            foreach (var a in template) if (a.value != IntPtr.Zero) Marshal.FreeHGlobal(a.value);
        }
    }

    [Test]
    public void GetAttributeValueSizes()
    {
        var tag = Tag;
        const ulong Unavailable = ulong.MaxValue; // CK_UNAVAILABLE_INFORMATION
        List<AttrOutcome> Run(ISlot slot) => H.InSession(slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, tag);
            var (_, ecPrv) = H.EcKeyPair(s, H.P256Oid, tag);
            var ll = LowLevel(LibOf(slot));
            var outcomes = new List<AttrOutcome>();
            // 1. NULL pValue: the lengths.
            var a = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, -1), (CKA.CKA_MODULUS, -1), (CKA.CKA_KEY_TYPE, -1)], out _);
            Assert.That(a.Rv, Is.EqualTo(CKR.CKR_OK), "size query");
            Assert.That(a.Lens, Is.EqualTo(new ulong[] { (ulong)tag.Length, 256, 8 }), "lengths");
            outcomes.Add(a);
            // 2. Right-sized buffers: the values.
            var b = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, tag.Length), (CKA.CKA_MODULUS, 256)], out var values);
            Assert.That(b.Rv, Is.EqualTo(CKR.CKR_OK));
            Assert.That(Encoding.UTF8.GetString(values[0]), Is.EqualTo(tag));
            Assert.That(values[1], Is.EqualTo(H.Bytes(s, pub, CKA.CKA_MODULUS)));
            outcomes.Add(b with { Lens = b.Lens });
            // 3. One buffer too small: CKR_BUFFER_TOO_SMALL, that attribute unavailable, the others filled.
            if (!SmallBufferReachesSoftoken(slot))
            {
                var c = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, tag.Length), (CKA.CKA_MODULUS, 10)], out values);
                Assert.That(c.Rv, Is.EqualTo(CKR.CKR_BUFFER_TOO_SMALL), "too-small buffer");
                Assert.That(c.Lens[1], Is.EqualTo(Unavailable), "the too-small attribute's ulValueLen");
                Assert.That(c.Lens[0], Is.EqualTo((ulong)tag.Length), "the other attribute's length");
                Assert.That(Encoding.UTF8.GetString(values[0]), Is.EqualTo(tag), "the other attribute still filled");
                if (!T.Softoken) outcomes.Add(c); // for softoken, checked above: directly it cannot be run
            }
            // 4. The sensitive CKA_VALUE of a private key.
            var d = GetAttrs(ll, s.SessionId, ecPrv.ObjectId, [(CKA.CKA_VALUE, -1), (CKA.CKA_KEY_TYPE, 8)], out values);
            Assert.That(d.Rv, Is.EqualTo(CKR.CKR_ATTRIBUTE_SENSITIVE), "sensitive CKA_VALUE of an EC private key");
            Assert.That(BitConverter.ToUInt64(values[1]), Is.EqualTo((ulong)CKK.CKK_EC), "the readable attribute still filled");
            Assert.That(d.Lens[0], Is.EqualTo(Unavailable));
            outcomes.Add(d);
            var d2 = GetAttrs(ll, s.SessionId, prv.ObjectId, [(CKA.CKA_PRIVATE_EXPONENT, 256), (CKA.CKA_KEY_TYPE, 8)], out values);
            Assert.That(d2.Rv, Is.EqualTo(CKR.CKR_ATTRIBUTE_SENSITIVE), "sensitive CKA_PRIVATE_EXPONENT");
            Assert.That(d2.Lens[0], Is.EqualTo(Unavailable));
            Assert.That(d2.Lens[1], Is.EqualTo(8UL));
            Assert.That(BitConverter.ToUInt64(values[1]), Is.EqualTo((ulong)CKK.CKK_RSA), "the readable attribute still filled");
            outcomes.Add(d2);
            // 5. An attribute type the object does not have.
            var e = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, -1), ((CKA)0x7FFF_FF01UL, -1)], out _);
            Assert.That(e.Rv, Is.EqualTo(CKR.CKR_ATTRIBUTE_TYPE_INVALID), "invalid type");
            Assert.That(e.Lens[1], Is.EqualTo(Unavailable));
            Assert.That(e.Lens[0], Is.EqualTo((ulong)tag.Length));
            outcomes.Add(e);
            return outcomes;
        });
        var direct = Run(D);
        var target = Run(T.Slot);
        Assert.That(target.Select(o => $"{o.Rv} [{string.Join(",", o.Lens)}]"), Is.EqualTo(direct.Select(o => $"{o.Rv} [{string.Join(",", o.Lens)}]")), "as direct");
    }

    /// <summary>
    /// Issue 15: a template attribute (CKA_WRAP_TEMPLATE, CKA_UNWRAP_TEMPLATE) given a non-NULL
    /// pValue of length 0, then CKA_LABEL. Directly SoftHSM answers CKR_OK; the module once encoded
    /// a nested count the broker did not expect and the broker dropped the connection
    /// (CKR_DEVICE_ERROR, then CKR_DEVICE_REMOVED). Same answers as direct, and the session lives on.
    /// </summary>
    [Test]
    public void ZeroLengthTemplateBufferBeforeLabel()
    {
        var tag = Tag;
        List<string> Run(ISlot slot) => H.InSession(slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, tag);
            var ll = LowLevel(LibOf(slot));
            var seen = new List<string>();
            foreach (var (obj, type) in new[] { (pub, CKA.CKA_WRAP_TEMPLATE), (prv, CKA.CKA_UNWRAP_TEMPLATE) })
            {
                var outcome = GetAttrs(ll, s.SessionId, obj.ObjectId, [(type, 0), (CKA.CKA_LABEL, 256)], out var values);
                seen.Add($"{type}: {outcome.Rv} [{string.Join(",", outcome.Lens)}] {Encoding.UTF8.GetString(values[1])}");
                // The connection survived: the next call on the session is answered.
                seen.Add($"then {H.Str(s, obj, CKA.CKA_LABEL)}");
            }
            return seen;
        });
        var direct = Run(D);
        if (!T.Softoken) Assert.That(direct[0], Does.StartWith("CKA_WRAP_TEMPLATE: CKR_OK [0,"), "SoftHSM direct answers CKR_OK");
        var target = Run(T.Slot);
        Assert.That(new[] { target[1], target[3] }, Is.EqualTo(new[] { direct[1], direct[3] }), "the connection survives");
        // p11-kit 0.24's client reads our broker's reply for a template attribute out of step
        // (CKR_DEVICE_ERROR and bytes of its own in the label): a known difference, issue 15's notes.
        if (T.Name != "p11kit-client-broker")
            Assert.That(target, Is.EqualTo(direct), "as direct");
    }

    /// <summary>
    /// Two-pass reads through the proxy may be answered from values fetched with the size query;
    /// these sequences show that every result is still the token's: a change between the passes
    /// is seen, a too-small buffer or another object or template takes the ordinary path.
    /// </summary>
    [Test]
    public void TwoPassReadsSeeWhatTheTokenHolds()
    {
        var tag = Tag;
        const int Big = 256;
        List<string> Run(ISlot slot) => H.InSession(slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, tag);
            var ll = LowLevel(LibOf(slot));
            var seen = new List<string>();
            string Show(AttrOutcome o, byte[][] values) =>
                $"{o.Rv} [{string.Join(",", o.Lens)}] {string.Join("|", values.Select(v => Encoding.UTF8.GetString(v)))}";
            // The plain two-pass read.
            var sizes = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, -1)], out var values);
            seen.Add(Show(sizes, values));
            var fetched = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, (int)sizes.Lens[0])], out values);
            Assert.That(Encoding.UTF8.GetString(values[0]), Is.EqualTo(tag), "the label");
            seen.Add(Show(fetched, values));
            // The label changes between the passes: the new one is read.
            GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, -1)], out _);
            s.SetAttributeValue(pub, H.Attrs((CKA.CKA_LABEL, tag + "-renamed")));
            fetched = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, Big)], out values);
            Assert.That(Encoding.UTF8.GetString(values[0]), Is.EqualTo(tag + "-renamed"), "the label changed between the passes");
            seen.Add(Show(fetched, values));
            // A buffer too small for one of them.
            if (!SmallBufferReachesSoftoken(slot))
            {
                // (softoken's public keys have no CKA_MODULUS_BITS: CKA_KEY_TYPE there.)
                var second = T.Softoken ? CKA.CKA_KEY_TYPE : CKA.CKA_MODULUS_BITS;
                GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, -1), (second, -1)], out _);
                fetched = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, 1), (second, 8)], out values);
                Assert.That(fetched.Rv, Is.EqualTo(CKR.CKR_BUFFER_TOO_SMALL), "a one-byte buffer for the label");
                Assert.That(fetched.Lens[0], Is.EqualTo(ulong.MaxValue), "the label unavailable");
                if (!T.Softoken) seen.Add($"{fetched.Rv} [{string.Join(",", fetched.Lens)}]");
            }
            // Sizes of one object, values of another.
            GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, -1)], out _);
            fetched = GetAttrs(ll, s.SessionId, prv.ObjectId, [(CKA.CKA_LABEL, Big)], out values);
            Assert.That(Encoding.UTF8.GetString(values[0]), Is.EqualTo(tag), "the private key's label");
            seen.Add(Show(fetched, values));
            // Sizes of two attributes, values of one.
            GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_LABEL, -1), (CKA.CKA_MODULUS, -1)], out _);
            fetched = GetAttrs(ll, s.SessionId, pub.ObjectId, [(CKA.CKA_MODULUS, Big)], out values);
            Assert.That(values[0], Is.EqualTo(H.Bytes(s, pub, CKA.CKA_MODULUS)), "the modulus alone");
            seen.Add($"{fetched.Rv} [{string.Join(",", fetched.Lens)}]");
            return seen;
        });
        Assert.That(Run(T.Slot), Is.EqualTo(Run(D)), "as direct");
    }

    [Test]
    public void SignOutputSizeQuery()
    {
        var data = Encoding.UTF8.GetBytes("p11proxy conformance: two-pass C_Sign");
        (CKR, ulong, CKR, ulong, CKR, ulong) Run(ISlot slot) => H.InSession(slot, s =>
        {
            var (pub, prv) = H.RsaKeyPair(s, Tag);
            var ll = LowLevel(LibOf(slot));
            var mech = LL.CkmUtils.CreateMechanism(CKM.CKM_SHA256_RSA_PKCS);
            Assert.That((CKR)ll.C_SignInit(s.SessionId, ref mech, prv.ObjectId), Is.EqualTo(CKR.CKR_OK));
            ulong len1 = 0;
            var rv1 = (CKR)ll.C_Sign(s.SessionId, data, (ulong)data.Length, null, ref len1);
            ulong len2 = 10;
            var small = new byte[10];
            var rv2 = (CKR)ll.C_Sign(s.SessionId, data, (ulong)data.Length, small, ref len2);
            var sig = new byte[len2 == 256 ? 256 : 512];
            ulong len3 = (ulong)sig.Length;
            var rv3 = (CKR)ll.C_Sign(s.SessionId, data, (ulong)data.Length, sig, ref len3);
            if (rv3 == CKR.CKR_OK)
            {
                s.Verify(H.Mech(CKM.CKM_SHA256_RSA_PKCS), pub, data, sig[..(int)len3], out bool ok);
                Assert.That(ok, Is.True, "the signature from the third call verifies");
            }
            // The operation is over after a successful C_Sign.
            ulong len4 = 256;
            Assert.That((CKR)ll.C_Sign(s.SessionId, data, (ulong)data.Length, sig, ref len4), Is.EqualTo(CKR.CKR_OPERATION_NOT_INITIALIZED));
            return (rv1, len1, rv2, len2, rv3, len3);
        });
        var d = Run(D);
        if (T.Softoken)
        {
            // softoken answers a too-small buffer with CKR_BUFFER_TOO_SMALL but leaves an uninitialised
            // value in *pulSignatureLen, and ends the operation: the next C_Sign is not initialised.
            // The same through every stack, but for that length, which nobody can compare.
            Assert.That((d.Item1, d.Item2, d.Item3, d.Item5), Is.EqualTo((CKR.CKR_OK, 256UL, CKR.CKR_BUFFER_TOO_SMALL, CKR.CKR_OPERATION_NOT_INITIALIZED)),
                "softoken directly");
            var t = Run(T.Slot);
            Assert.That((t.Item1, t.Item2, t.Item3, t.Item5), Is.EqualTo((d.Item1, d.Item2, d.Item3, d.Item5)), "as directly");
            return;
        }
        Assert.That(d, Is.EqualTo((CKR.CKR_OK, 256UL, CKR.CKR_BUFFER_TOO_SMALL, 256UL, CKR.CKR_OK, 256UL)), "direct");
        Assert.That(Run(T.Slot), Is.EqualTo(d), "as direct");
    }

    [Test]
    public void WrongPin()
    {
        CKR Run(ISlot slot)
        {
            using var s = slot.OpenSession(SessionType.ReadWrite);
            var e = Assert.Throws<Pkcs11Exception>(() => s.Login(CKU.CKU_USER, "0000"))!;
            // A good login afterwards resets SoftHSM's failure counter (and CKF_USER_PIN_COUNT_LOW).
            s.Login(CKU.CKU_USER, Paths.UserPin);
            s.Logout();
            return e.RV;
        }
        Assert.That(Run(D), Is.EqualTo(CKR.CKR_PIN_INCORRECT));
        Assert.That(Run(T.Slot), Is.EqualTo(CKR.CKR_PIN_INCORRECT));
    }

    [Test]
    public void LogoutHidesPrivateObjects()
    {
        var tag = Tag;
        (int, int, int, int, ulong, ulong) Run(ISlot slot)
        {
            using var s = slot.OpenSession(SessionType.ReadWrite);
            s.Login(CKU.CKU_USER, Paths.UserPin);
            var loggedInState = s.GetSessionInfo().State;
            if (T.Softoken)
                // softoken has no private data objects (CKR_ATTRIBUTE_VALUE_INVALID): a private secret key instead.
                s.CreateObject(H.Attrs((CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), (CKA.CKA_KEY_TYPE, CKK.CKK_AES), (CKA.CKA_TOKEN, false),
                    (CKA.CKA_PRIVATE, true), (CKA.CKA_VALUE, H.Seq(16)), (CKA.CKA_LABEL, tag)));
            else
                s.CreateObject(H.Attrs((CKA.CKA_CLASS, CKO.CKO_DATA), (CKA.CKA_TOKEN, false), (CKA.CKA_PRIVATE, true), (CKA.CKA_APPLICATION, tag)));
            s.CreateObject(H.Attrs((CKA.CKA_CLASS, CKO.CKO_DATA), (CKA.CKA_TOKEN, false), (CKA.CKA_PRIVATE, false), (CKA.CKA_APPLICATION, tag)));
            var (_, _) = H.RsaKeyPair(s, tag);
            int allIn = s.FindAllObjects(H.Attrs((CKA.CKA_APPLICATION, tag))).Count;
            int keysIn = s.FindAllObjects(H.Attrs((CKA.CKA_LABEL, tag))).Count;
            s.Logout();
            Assert.That(s.GetSessionInfo().State, Is.EqualTo(CKS.CKS_RW_PUBLIC_SESSION), "state after C_Logout");
            int allOut = s.FindAllObjects(H.Attrs((CKA.CKA_APPLICATION, tag))).Count;
            int keysOut = s.FindAllObjects(H.Attrs((CKA.CKA_LABEL, tag))).Count;
            // SoftHSM answers CKR_OK to a C_Logout when nobody is logged in; the target must answer the same.
            CKR second = CKR.CKR_OK;
            try { s.Logout(); } catch (Pkcs11Exception e) { second = e.RV; }
            return (allIn, keysIn, allOut, keysOut, (ulong)loggedInState, (ulong)second);
        }
        var d = Run(D);
        if (!T.Softoken) Assert.That(d, Is.EqualTo((2, 2, 1, 1, (ulong)CKS.CKS_RW_USER_FUNCTIONS, (ulong)CKR.CKR_OK)), "direct");
        Assert.That(Run(T.Slot), Is.EqualTo(d), "as direct");
    }

    [Test]
    public void GenerateRandom()
    {
        H.InSession(T.Slot, s =>
        {
            foreach (var n in new[] { 1, 32, 4096 })
                Assert.That(s.GenerateRandom(n), Has.Length.EqualTo(n));
            Assert.That(s.GenerateRandom(32), Is.Not.EqualTo(s.GenerateRandom(32)), "two 32-byte draws differ");
            var big = s.GenerateRandom(4096);
            Assert.That(big.Distinct().Count(), Is.GreaterThan(200), "4096 random bytes use most byte values");
            return 0;
        }, login: false);
    }

    [Test]
    public void InitializeTwice()
    {
        var ll = LowLevel(T.Lib);
        Assert.That((CKR)ll.C_GetFunctionList(out var fl1), Is.EqualTo(CKR.CKR_OK), "C_GetFunctionList");
        Assert.That((CKR)ll.C_GetFunctionList(out var fl2), Is.EqualTo(CKR.CKR_OK), "C_GetFunctionList again");
        Assert.That(fl1, Is.Not.EqualTo(IntPtr.Zero));
        Assert.That(fl2, Is.EqualTo(fl1), "the same function list both times");
        var rv = (CKR)ll.C_Initialize(new LL.CK_C_INITIALIZE_ARGS { Flags = (ulong)CKF.CKF_OS_LOCKING_OK });
        Assert.That(rv, Is.EqualTo(CKR.CKR_CRYPTOKI_ALREADY_INITIALIZED), "a second C_Initialize on the initialised instance");
        Assert.That((CKR)ll.C_Initialize(null), Is.EqualTo(CKR.CKR_CRYPTOKI_ALREADY_INITIALIZED), "again with NULL args");
        // Still usable afterwards.
        Assert.That(T.Slot.GetTokenInfo().Label.Trim(), Is.EqualTo(Paths.TokenLabel));
    }

    // ---------------------------------------------------------------- concurrency

    [Test]
    public void SixteenThreads()
    {
        const int Threads = 16, Calls = 200;
        var tag = Tag;
        using var main = T.Slot.OpenSession(SessionType.ReadWrite);
        H.Login(main);
        var (pub, prv) = H.RsaKeyPair(main, tag);
        using var rsa = H.DotNetRsa(main, pub);
        var errors = new System.Collections.Concurrent.ConcurrentQueue<string>();
        int done = 0;
        var threads = Enumerable.Range(0, Threads).Select(n => new Thread(() =>
        {
            try
            {
                using var s = T.Slot.OpenSession(SessionType.ReadWrite);
                var myLabel = $"{tag}-thread-{n}";
                var mine = s.CreateObject(H.Attrs((CKA.CKA_CLASS, CKO.CKO_DATA), (CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, myLabel),
                    (CKA.CKA_APPLICATION, tag), (CKA.CKA_VALUE, Encoding.UTF8.GetBytes(myLabel))));
                for (int i = 0; i < Calls; i++)
                {
                    switch (i % 4)
                    {
                        case 0:
                            var data = Encoding.UTF8.GetBytes($"{myLabel} call {i}");
                            var sig = s.Sign(H.Mech(CKM.CKM_SHA256_RSA_PKCS), prv, data);
                            s.Verify(H.Mech(CKM.CKM_SHA256_RSA_PKCS), pub, data, sig, out bool ok);
                            if (!ok || !rsa.VerifyData(data, sig, HashAlgorithmName.SHA256, RSASignaturePadding.Pkcs1))
                                errors.Enqueue($"thread {n} call {i}: signature does not verify");
                            break;
                        case 1:
                            var found = s.FindAllObjects(H.Attrs((CKA.CKA_LABEL, myLabel)));
                            if (found.Count != 1 || found[0].ObjectId != mine.ObjectId)
                                errors.Enqueue($"thread {n} call {i}: found {found.Count} objects for its label");
                            break;
                        case 2:
                            var value = Encoding.UTF8.GetString(H.Bytes(s, mine, CKA.CKA_VALUE));
                            var label = H.Str(s, mine, CKA.CKA_LABEL);
                            if (value != myLabel || label != myLabel)
                                errors.Enqueue($"thread {n} call {i}: read '{label}'/'{value}', expected '{myLabel}'");
                            break;
                        default:
                            int len = 1 + n * 13 + i % 7;
                            var r = s.GenerateRandom(len);
                            if (r.Length != len) errors.Enqueue($"thread {n} call {i}: {r.Length} random bytes, asked {len}");
                            break;
                    }
                }
                s.DestroyObject(mine);
                Interlocked.Increment(ref done);
            }
            catch (Exception e)
            {
                errors.Enqueue($"thread {n}: {e.GetType().Name}: {e.Message}");
            }
        }, 1 << 20)).ToList();
        threads.ForEach(t => t.Start());
        foreach (var t in threads)
            Assert.That(t.Join(TimeSpan.FromMinutes(3)), Is.True, "a thread did not finish within 3 minutes (hang?)");
        Assert.That(errors, Is.Empty);
        Assert.That(done, Is.EqualTo(Threads));
        Assert.That(main.FindAllObjects(H.Attrs((CKA.CKA_APPLICATION, tag))), Is.Empty, "all thread objects destroyed");
    }
}
