using System.Security.Cryptography;
using Net.Pkcs11Interop.Common;
using Net.Pkcs11Interop.HighLevelAPI;

namespace P11Proxy.Conformance;

internal static class H
{
    public static readonly byte[] P256Oid = [0x06, 0x08, 0x2A, 0x86, 0x48, 0xCE, 0x3D, 0x03, 0x01, 0x07];
    public static readonly byte[] P384Oid = [0x06, 0x05, 0x2B, 0x81, 0x04, 0x00, 0x22];

    /// <summary>The mechanisms SoftHSM lists that p11-kit 0.24.1's client leaves out of
    /// C_GetMechanismList because its rpc-message.c cannot carry their parameters (or does not know
    /// them as parameterless). Measured: `pkcs11-tool -M` on SoftHSM directly versus through
    /// p11-kit-client.so + p11-kit server 0.24.1. A protocol-0 path must hide exactly these.</summary>
    public static readonly HashSet<ulong> HiddenByP11Kit024 =
    [
        (ulong)CKM.CKM_AES_CBC, (ulong)CKM.CKM_AES_CBC_ENCRYPT_DATA, (ulong)CKM.CKM_AES_CBC_PAD, (ulong)CKM.CKM_AES_CMAC,
        (ulong)CKM.CKM_AES_CTR, (ulong)CKM.CKM_AES_ECB_ENCRYPT_DATA, (ulong)CKM.CKM_AES_GCM, (ulong)CKM.CKM_AES_KEY_WRAP,
        (ulong)CKM.CKM_AES_KEY_WRAP_PAD,
        (ulong)CKM.CKM_DES_CBC, (ulong)CKM.CKM_DES_CBC_ENCRYPT_DATA, (ulong)CKM.CKM_DES_CBC_PAD, (ulong)CKM.CKM_DES_ECB_ENCRYPT_DATA,
        (ulong)CKM.CKM_DES3_CBC, (ulong)CKM.CKM_DES3_CBC_ENCRYPT_DATA, (ulong)CKM.CKM_DES3_CBC_PAD, (ulong)CKM.CKM_DES3_CMAC,
        (ulong)CKM.CKM_DES3_ECB_ENCRYPT_DATA, (ulong)CKM.CKM_DH_PKCS_DERIVE,
        (ulong)CKM.CKM_DSA_SHA224, (ulong)CKM.CKM_DSA_SHA256, (ulong)CKM.CKM_DSA_SHA384, (ulong)CKM.CKM_DSA_SHA512,
        0x1055 /* CKM_EC_EDWARDS_KEY_PAIR_GEN */, (ulong)CKM.CKM_ECDH1_DERIVE, 0x1057 /* CKM_EDDSA */,
        (ulong)CKM.CKM_SHA1_RSA_PKCS_PSS, (ulong)CKM.CKM_SHA224, (ulong)CKM.CKM_SHA224_HMAC, (ulong)CKM.CKM_SHA224_RSA_PKCS,
        (ulong)CKM.CKM_SHA224_RSA_PKCS_PSS, (ulong)CKM.CKM_SHA256_RSA_PKCS_PSS, (ulong)CKM.CKM_SHA384_RSA_PKCS_PSS,
        (ulong)CKM.CKM_SHA512_RSA_PKCS_PSS,
    ];

    /// <summary>
    /// What a protocol-1 path hides: p11-kit 0.25.0-0.25.5 carry the parameters of AES/DES CBC,
    /// CTR, GCM, CMAC, ECDH and the PSS family, but still not these (no entry in their tables).
    /// </summary>
    public static readonly HashSet<ulong> HiddenByP11Kit025 =
    [
        (ulong)CKM.CKM_AES_CBC_ENCRYPT_DATA, (ulong)CKM.CKM_AES_ECB_ENCRYPT_DATA, (ulong)CKM.CKM_AES_KEY_WRAP,
        (ulong)CKM.CKM_AES_KEY_WRAP_PAD, (ulong)CKM.CKM_DES_CBC_ENCRYPT_DATA, (ulong)CKM.CKM_DES_ECB_ENCRYPT_DATA,
        (ulong)CKM.CKM_DES3_CBC_ENCRYPT_DATA, (ulong)CKM.CKM_DES3_ECB_ENCRYPT_DATA,
        (ulong)CKM.CKM_DSA_SHA224, (ulong)CKM.CKM_DSA_SHA256, (ulong)CKM.CKM_DSA_SHA384, (ulong)CKM.CKM_DSA_SHA512,
        0x1055 /* CKM_EC_EDWARDS_KEY_PAIR_GEN */, 0x1057 /* CKM_EDDSA */,
    ];

    public static readonly HashSet<ulong> NothingHidden = [];

    public static List<IObjectAttribute> Attrs(params (CKA type, object value)[] items)
    {
        var f = Reference.Factories.ObjectAttributeFactory;
        var list = new List<IObjectAttribute>();
        foreach (var (t, v) in items)
        {
            list.Add(v switch
            {
                bool b => f.Create(t, b),
                CKO o => f.Create(t, o),
                CKK k => f.Create(t, k),
                ulong u => f.Create(t, u),
                int i => f.Create(t, (ulong)i),
                string s => f.Create(t, s),
                byte[] bytes => f.Create(t, bytes),
                _ => throw new ArgumentException($"attribute value {v.GetType()}"),
            });
        }
        return list;
    }

    public static IMechanism Mech(CKM m) => Reference.Factories.MechanismFactory.Create(m);
    public static IMechanism Mech(CKM m, byte[] param) => Reference.Factories.MechanismFactory.Create(m, param);
    public static IMechanism Mech(CKM m, IMechanismParams param) => Reference.Factories.MechanismFactory.Create(m, param);
    public static IMechanismParamsFactory Params => Reference.Factories.MechanismParamsFactory;

    public static void Login(ISession s)
    {
        try { s.Login(CKU.CKU_USER, Paths.UserPin); }
        catch (Pkcs11Exception e) when (e.RV == CKR.CKR_USER_ALREADY_LOGGED_IN) { }
    }

    /// <summary>Runs f in a fresh logged-in read/write session of slot and closes it.</summary>
    public static T InSession<T>(ISlot slot, Func<ISession, T> f, bool login = true)
    {
        using var s = slot.OpenSession(SessionType.ReadWrite);
        if (login) Login(s);
        return f(s);
    }

    public static byte[] Bytes(ISession s, IObjectHandle o, CKA a) => s.GetAttributeValue(o, [a])[0].GetValueAsByteArray();
    public static ulong ULong(ISession s, IObjectHandle o, CKA a) => s.GetAttributeValue(o, [a])[0].GetValueAsUlong();

    /// <summary>A CK_ULONG attribute, or 0 when the object reports it unavailable.</summary>
    public static ulong ULongOrZero(ISession s, IObjectHandle o, CKA a)
    {
        var attribute = s.GetAttributeValue(o, [a])[0];
        return attribute.CannotBeRead ? 0 : attribute.GetValueAsUlong();
    }
    public static string Str(ISession s, IObjectHandle o, CKA a) => s.GetAttributeValue(o, [a])[0].GetValueAsString();
    public static bool Bool(ISession s, IObjectHandle o, CKA a) => s.GetAttributeValue(o, [a])[0].GetValueAsBool();

    public static (IObjectHandle pub, IObjectHandle priv) RsaKeyPair(ISession s, string label)
    {
        s.GenerateKeyPair(Mech(CKM.CKM_RSA_PKCS_KEY_PAIR_GEN),
            Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, label), (CKA.CKA_ENCRYPT, true), (CKA.CKA_VERIFY, true),
                  (CKA.CKA_WRAP, true), (CKA.CKA_MODULUS_BITS, 2048UL), (CKA.CKA_PUBLIC_EXPONENT, new byte[] { 1, 0, 1 })),
            Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, label), (CKA.CKA_PRIVATE, true), (CKA.CKA_SENSITIVE, true),
                  (CKA.CKA_DECRYPT, true), (CKA.CKA_SIGN, true), (CKA.CKA_UNWRAP, true)),
            out var pub, out var priv);
        return (pub, priv);
    }

    public static RSA DotNetRsa(ISession s, IObjectHandle pub) =>
        RSA.Create(new RSAParameters { Modulus = Bytes(s, pub, CKA.CKA_MODULUS), Exponent = Bytes(s, pub, CKA.CKA_PUBLIC_EXPONENT) });

    public static (IObjectHandle pub, IObjectHandle priv) EcKeyPair(ISession s, byte[] oid, string label, bool derive = false)
    {
        s.GenerateKeyPair(Mech(CKM.CKM_EC_KEY_PAIR_GEN),
            Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, label), (CKA.CKA_VERIFY, true), (CKA.CKA_EC_PARAMS, oid)),
            Attrs((CKA.CKA_TOKEN, false), (CKA.CKA_LABEL, label), (CKA.CKA_PRIVATE, true), (CKA.CKA_SENSITIVE, true),
                  (CKA.CKA_SIGN, true), (CKA.CKA_DERIVE, derive)),
            out var pub, out var priv);
        return (pub, priv);
    }

    /// <summary>The uncompressed point 04||X||Y from CKA_EC_POINT (a DER OCTET STRING, or raw).</summary>
    public static byte[] EcPointRaw(byte[] ecPoint)
    {
        if (ecPoint.Length > 0 && ecPoint[0] == 0x04 && (ecPoint.Length % 2) == 1 && ecPoint.Length != 2 + ecPoint[1]) return ecPoint;
        Assert.That(ecPoint[0], Is.EqualTo(0x04), "CKA_EC_POINT is not an OCTET STRING");
        int len = ecPoint[1], off = 2;
        if ((len & 0x80) != 0)
        {
            int n = len & 0x7f;
            len = 0;
            for (int i = 0; i < n; i++) len = (len << 8) | ecPoint[2 + i];
            off = 2 + n;
        }
        Assert.That(ecPoint.Length, Is.EqualTo(off + len), "CKA_EC_POINT length");
        return ecPoint[off..];
    }

    public static ECDsa DotNetEcdsa(byte[] ecPoint, ECCurve curve)
    {
        var raw = EcPointRaw(ecPoint);
        Assert.That(raw[0], Is.EqualTo(0x04), "uncompressed point");
        int n = (raw.Length - 1) / 2;
        return ECDsa.Create(new ECParameters { Curve = curve, Q = new ECPoint { X = raw[1..(1 + n)], Y = raw[(1 + n)..] } });
    }

    public static IObjectHandle ImportAes(ISession s, byte[] key, string label) =>
        s.CreateObject(Attrs((CKA.CKA_CLASS, CKO.CKO_SECRET_KEY), (CKA.CKA_KEY_TYPE, CKK.CKK_AES), (CKA.CKA_TOKEN, false),
            (CKA.CKA_LABEL, label), (CKA.CKA_VALUE, key), (CKA.CKA_ENCRYPT, true), (CKA.CKA_DECRYPT, true),
            (CKA.CKA_SENSITIVE, false), (CKA.CKA_EXTRACTABLE, true)));

    public static byte[] Seq(int n, int seed = 1)
    {
        var b = new byte[n];
        for (int i = 0; i < n; i++) b[i] = (byte)(i * 31 + seed * 7 + (i >> 3));
        return b;
    }

    public static byte[] AesCtr(byte[] key, byte[] counter, byte[] data)
    {
        using var aes = Aes.Create();
        aes.Key = key;
        var ctr = (byte[])counter.Clone();
        var output = new byte[data.Length];
        for (int off = 0; off < data.Length; off += 16)
        {
            var ks = aes.EncryptEcb(ctr, PaddingMode.None);
            for (int i = 0; i < 16 && off + i < data.Length; i++) output[off + i] = (byte)(data[off + i] ^ ks[i]);
            for (int i = 15; i >= 0; i--) if (++ctr[i] != 0) break;
        }
        return output;
    }

    public static byte[] Through(Func<Stream, Stream, int> op, byte[] input)
    {
        using var i = new MemoryStream(input);
        using var o = new MemoryStream();
        op(i, o);
        return o.ToArray();
    }

    public static Pkcs11Exception Fails(CKR expected, TestDelegate code, string what)
    {
        var e = Assert.Throws<Pkcs11Exception>(code, what)!;
        Assert.That(e.RV, Is.EqualTo(expected), $"{what}: {e.Method}");
        return e;
    }
}
