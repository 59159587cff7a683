namespace P11Proxy.Wire;

/// <summary>Bytes that may also be a NULL pointer on the C side (p11-kit's 0xffffffff length).</summary>
public readonly record struct WireBytes(ReadOnlyMemory<byte> Data, bool IsNull)
{
    public static WireBytes Null => new(default, true);
    public static WireBytes Of(ReadOnlyMemory<byte> data) => new(data, false);
    public int Length => IsNull ? 0 : Data.Length;

    internal void Write(WireWriter writer)
    {
        if (IsNull) writer.WriteNullByteArray();
        else writer.WriteByteArray(Data.Span);
    }

    internal static bool TryRead(WireReader reader, out WireBytes value)
    {
        bool ok = reader.TryReadByteArray(out var data, out bool isNull);
        value = new WireBytes(data, isNull);
        return ok;
    }
}

/// <summary>
/// A mechanism parameter in a form free of pointers: the module builds it from the caller's
/// CK_MECHANISM, the broker turns it back into the C structure the backend expects.
/// </summary>
public abstract record MechanismParameter;

/// <summary>Parameter bytes taken as they are (IVs, DH public values, anything without a structured codec).</summary>
public sealed record RawParameter(ReadOnlyMemory<byte> Bytes) : MechanismParameter;

public sealed record RsaPssParameter(ulong HashAlgorithm, ulong Mgf, ulong SaltLength) : MechanismParameter;

public sealed record RsaOaepParameter(ulong HashAlgorithm, ulong Mgf, ulong Source, WireBytes SourceData) : MechanismParameter;

/// <summary>CK_ECDH1_DERIVE_PARAMS (also used by p11-kit for the IBM X25519/X448 mechanisms).</summary>
public sealed record Ecdh1DeriveParameter(ulong Kdf, WireBytes SharedData, WireBytes PublicData) : MechanismParameter;

public sealed record AesCtrParameter(ulong CounterBits, ReadOnlyMemory<byte> CounterBlock) : MechanismParameter;

public sealed record GcmParameter(WireBytes Iv, ulong IvBits, WireBytes Aad, ulong TagBits) : MechanismParameter;

/// <summary>CK_MAC_GENERAL_PARAMS: the requested MAC length.</summary>
public sealed record MacGeneralParameter(ulong Length) : MechanismParameter;

public sealed record IbmEcdsaOtherParameter(ulong Submechanism) : MechanismParameter;

public sealed record IbmBtcDeriveParameter(ulong Type, ulong ChildKeyIndex, WireBytes ChainCode, ulong Version) : MechanismParameter;

public sealed record IbmKyberParameter(ulong Version, ulong Mode, ulong Kdf, byte Prepend, WireBytes Cipher,
    WireBytes SharedData, ulong Secret) : MechanismParameter;

public sealed record IbmAttributeBoundWrapParameter(ulong SignVerifyKey) : MechanismParameter;

/// <summary>A mechanism as it travels: its type and an optional parameter (null: pParameter NULL, length 0).</summary>
public readonly record struct WireMechanism(ulong Type, MechanismParameter? Parameter)
{
    /// <summary>The marker p11-kit sends for a NULL CK_MECHANISM pointer (cancels an operation in *Init).</summary>
    public const uint NullMechanismMarker = 0xffffffff;

    public static WireMechanism NullMechanism => new(NullMechanismMarker, null);

    public bool IsNullMechanism => Type == NullMechanismMarker;
}

/// <summary>
/// The value written back into the caller's mechanism parameter by C_DeriveKey2 ('P'): only the
/// IBM BTC-derive chain code and the IBM Kyber cipher text are carried.
/// </summary>
public readonly record struct MechanismUpdate(bool HasParameter, byte Capsulation, bool HasData, WireBytes Data, uint Length);
