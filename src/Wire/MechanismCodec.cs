using static P11Proxy.Pkcs11.Pkcs11Constants;

namespace P11Proxy.Wire;

/// <summary>Mechanisms ('M') and mechanism updates ('P') in the layout the peer's protocol version uses.</summary>
public static class MechanismCodec
{
    /// <summary>
    /// Encodes a mechanism. Returns CKR_OK, or CKR_MECHANISM_INVALID when the peer cannot carry it
    /// (what p11-kit's client answers), or CKR_MECHANISM_PARAM_INVALID when the parameter does not fit.
    /// <paramref name="anyIvLength"/>: the peer is our broker, which takes an IV of any length (see
    /// <see cref="MechanismParameterCodec.IvLength"/>).
    /// </summary>
    public static ulong Encode(WireWriter writer, WireProfile profile, in WireMechanism mechanism, bool anyIvLength = false)
    {
        if (mechanism.IsNullMechanism)
        {
            // p11-kit 0.24 knows no marker for a NULL mechanism; its own client refuses the call.
            if (!profile.HasNullMechanismMarker)
                return CKR_ARGUMENTS_BAD;
            writer.WriteUInt32(WireMechanism.NullMechanismMarker);
            return CKR_OK;
        }
        // Peers of version 2 take any mechanism (an absent parameter, or plain bytes through the
        // byte-array fallback); older peers only what p11-kit's client of their time carried.
        bool anyMechanism = profile.MechanismEncoding == MechanismEncoding.TypeThenOptionalParameter;
        if (mechanism.Type > uint.MaxValue - 1 || (!anyMechanism && !profile.CanCarry(mechanism.Type)))
            return CKR_MECHANISM_INVALID;

        writer.WriteUInt32((uint)mechanism.Type);
        bool noParameters = profile.HasNoParameters(mechanism.Type);
        var codec = profile.CodecFor(mechanism.Type);

        if (profile.MechanismEncoding == MechanismEncoding.TypeThenOptionalParameter)
        {
            if (noParameters)
                return CKR_OK;
            if (mechanism.Parameter is null)
            {
                writer.WriteByte(0);
                return CKR_OK;
            }
            writer.WriteByte(1);
        }
        else if (noParameters)
        {
            writer.WriteNullByteArray();
            return CKR_OK;
        }
        else if (mechanism.Parameter is null)
        {
            // The old layout has no "absent" marker for structured parameters; a NULL byte array
            // is what p11-kit 0.24 sent for its byte-array fallback.
            if (codec is not null)
                return CKR_MECHANISM_PARAM_INVALID;
            writer.WriteNullByteArray();
            return CKR_OK;
        }

        var parameter = mechanism.Parameter!;
        if (anyIvLength && codec?.IvLength is not null) codec = MechanismParameterCodec.Bytes;
        bool encoded = codec is not null
            ? codec.Encode(writer, parameter)
            : parameter is RawParameter && MechanismParameterCodec.Bytes.Encode(writer, parameter);
        return encoded && !writer.Failed ? CKR_OK : CKR_MECHANISM_PARAM_INVALID;
    }

    /// <summary>Decodes a mechanism; false on malformed or truncated input.</summary>
    public static bool TryDecode(WireReader reader, WireProfile profile, out WireMechanism mechanism)
    {
        mechanism = default;
        if (!reader.TryReadUInt32(out uint type))
            return false;
        if (type == WireMechanism.NullMechanismMarker && profile.HasNullMechanismMarker)
        {
            mechanism = WireMechanism.NullMechanism;
            return true;
        }

        var codec = profile.CodecFor(type);
        if (profile.MechanismEncoding == MechanismEncoding.TypeThenOptionalParameter)
        {
            if (profile.HasNoParameters(type))
            {
                mechanism = new WireMechanism(type, null);
                return true;
            }
            if (!reader.TryReadByte(out byte hasParameter))
                return false;
            if (hasParameter == 0)
            {
                mechanism = new WireMechanism(type, null);
                return true;
            }
        }
        else if (codec is null)
        {
            // Old layout: a byte array, NULL for parameterless mechanisms.
            if (!reader.TryReadByteArray(out var bytes, out bool isNull))
                return false;
            mechanism = new WireMechanism(type, isNull ? null : new RawParameter(bytes));
            return true;
        }

        if (!(codec ?? MechanismParameterCodec.Bytes).TryDecode(reader, out var parameter))
            return false;
        mechanism = new WireMechanism(type, parameter);
        return true;
    }

    /// <summary>Whether a mechanism type has a parameter that the module writes back after C_DeriveKey2.</summary>
    public static bool HasUpdatableParameter(ulong type) => type is CKM_IBM_BTC_DERIVE or CKM_IBM_KYBER;

    /// <summary>Writes the 'P' value of a C_DeriveKey2 reply (p11_rpc_buffer_add_mech_param_update).</summary>
    public static void EncodeUpdate(WireWriter writer, WireProfile profile, ulong type, in MechanismUpdate update)
    {
        if (profile.HasNoParameters(type))
            return;
        if (!update.HasParameter)
        {
            writer.WriteByte(0);
            return;
        }
        writer.WriteByte(1);
        if (type == CKM_IBM_KYBER)
        {
            writer.WriteByte(update.Capsulation);
            if (update.Capsulation != CK_IBM_KYBER_KEM_ENCAPSULATE)
                return;
        }
        else if (type != CKM_IBM_BTC_DERIVE)
        {
            return;
        }
        WriteDataOrLength(writer, update);
    }

    public static bool TryDecodeUpdate(WireReader reader, WireProfile profile, ulong type, out MechanismUpdate update)
    {
        update = default;
        if (profile.HasNoParameters(type))
            return true;
        if (!reader.TryReadByte(out byte hasParameter))
            return false;
        if (hasParameter == 0)
            return true;
        byte capsulation = 0;
        if (type == CKM_IBM_KYBER)
        {
            if (!reader.TryReadByte(out capsulation))
                return false;
            if (capsulation != CK_IBM_KYBER_KEM_ENCAPSULATE)
            {
                update = new MechanismUpdate(true, capsulation, false, WireBytes.Null, 0);
                return true;
            }
        }
        else if (type != CKM_IBM_BTC_DERIVE)
        {
            update = new MechanismUpdate(true, 0, false, WireBytes.Null, 0);
            return true;
        }
        if (!reader.TryReadByte(out byte hasData))
            return false;
        if (hasData != 0)
        {
            if (!reader.TryReadByteArray(out var data, out bool isNull))
                return false;
            update = new MechanismUpdate(true, capsulation, true, new WireBytes(data, isNull), (uint)data.Length);
            return true;
        }
        if (!reader.TryReadUInt32(out uint length))
            return false;
        update = new MechanismUpdate(true, capsulation, false, WireBytes.Null, length);
        return true;
    }

    private static void WriteDataOrLength(WireWriter writer, in MechanismUpdate update)
    {
        if (update.HasData)
        {
            writer.WriteByte(1);
            update.Data.Write(writer);
        }
        else
        {
            writer.WriteByte(0);
            writer.WriteUInt32(update.Length);
        }
    }
}
