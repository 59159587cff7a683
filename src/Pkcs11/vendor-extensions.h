/*
 * Constants that p11-kit's RPC code (p11-kit/rpc-message.c,
 * rpc-client.c, rpc-server.c) serialises, but that no Debian header defines:
 * the IBM vendor names, and (at the end) a few standard ones NSS omits.
 *
 * IBM values copied from p11-kit's common/pkcs11x.h (the CRYPTOKI_IBM_VENDOR_DEFINED
 * block, which mirrors opencryptoki's pkcs11types.h). This file is input to
 * src/Pkcs11/generate-constants.sh; it is read after NSS's pkcs11t.h, so it may
 * refer to CKA_/CKK_/CKM_VENDOR_DEFINED from there.
 */
#ifndef P11PROXY_VENDOR_EXTENSIONS_H
#define P11PROXY_VENDOR_EXTENSIONS_H

/* Key types */
#define CKK_IBM_PQC_DILITHIUM                  (CKK_VENDOR_DEFINED + 0x10023)

/* Attributes */
#define CKA_IBM_OPAQUE                         (CKA_VENDOR_DEFINED + 0x1)
#define CKA_IBM_OPAQUE_REENC                   (CKA_VENDOR_DEFINED + 0x3)
#define CKA_IBM_OPAQUE_OLD                     (CKA_VENDOR_DEFINED + 0x4)
#define CKA_IBM_RESTRICTABLE                   (CKA_VENDOR_DEFINED + 0x10001)
#define CKA_IBM_NEVER_MODIFIABLE               (CKA_VENDOR_DEFINED + 0x10002)
#define CKA_IBM_RETAINKEY                      (CKA_VENDOR_DEFINED + 0x10003)
#define CKA_IBM_ATTRBOUND                      (CKA_VENDOR_DEFINED + 0x10004)
#define CKA_IBM_KEYTYPE                        (CKA_VENDOR_DEFINED + 0x10005)
#define CKA_IBM_CV                             (CKA_VENDOR_DEFINED + 0x10006)
#define CKA_IBM_MACKEY                         (CKA_VENDOR_DEFINED + 0x10007)
#define CKA_IBM_USE_AS_DATA                    (CKA_VENDOR_DEFINED + 0x10008)
#define CKA_IBM_STRUCT_PARAMS                  (CKA_VENDOR_DEFINED + 0x10009)
#define CKA_IBM_STD_COMPLIANCE1                (CKA_VENDOR_DEFINED + 0x1000a)
#define CKA_IBM_PROTKEY_EXTRACTABLE            (CKA_VENDOR_DEFINED + 0x1000c)
#define CKA_IBM_PROTKEY_NEVER_EXTRACTABLE      (CKA_VENDOR_DEFINED + 0x1000d)
#define CKA_IBM_DILITHIUM_KEYFORM              (CKA_VENDOR_DEFINED + 0xd0001)
#define CKA_IBM_DILITHIUM_RHO                  (CKA_VENDOR_DEFINED + 0xd0002)
#define CKA_IBM_DILITHIUM_SEED                 (CKA_VENDOR_DEFINED + 0xd0003)
#define CKA_IBM_DILITHIUM_TR                   (CKA_VENDOR_DEFINED + 0xd0004)
#define CKA_IBM_DILITHIUM_S1                   (CKA_VENDOR_DEFINED + 0xd0005)
#define CKA_IBM_DILITHIUM_S2                   (CKA_VENDOR_DEFINED + 0xd0006)
#define CKA_IBM_DILITHIUM_T0                   (CKA_VENDOR_DEFINED + 0xd0007)
#define CKA_IBM_DILITHIUM_T1                   (CKA_VENDOR_DEFINED + 0xd0008)
#define CKA_IBM_DILITHIUM_MODE                 (CKA_VENDOR_DEFINED + 0x00010)
#define CKA_IBM_CCA_AES_KEY_MODE               (CKA_VENDOR_DEFINED + 0xd0101)
#define CKA_IBM_OPAQUE_PKEY                    (CKA_VENDOR_DEFINED + 0xd0100)
#define CKA_IBM_KYBER_MODE                     (CKA_VENDOR_DEFINED + 0x0000e)
#define CKA_IBM_KYBER_KEYFORM                  (CKA_VENDOR_DEFINED + 0xd0009)
#define CKA_IBM_KYBER_PK                       (CKA_VENDOR_DEFINED + 0xd000a)
#define CKA_IBM_KYBER_SK                       (CKA_VENDOR_DEFINED + 0xd000b)

/* Mechanisms */
#define CKM_IBM_SHA3_224                       (CKM_VENDOR_DEFINED + 0x10001)
#define CKM_IBM_SHA3_256                       (CKM_VENDOR_DEFINED + 0x10002)
#define CKM_IBM_SHA3_384                       (CKM_VENDOR_DEFINED + 0x10003)
#define CKM_IBM_SHA3_512                       (CKM_VENDOR_DEFINED + 0x10004)
#define CKM_IBM_CMAC                           (CKM_VENDOR_DEFINED + 0x10007)
#define CKM_IBM_EC_X25519                      (CKM_VENDOR_DEFINED + 0x1001b)
#define CKM_IBM_ED25519_SHA512                 (CKM_VENDOR_DEFINED + 0x1001c)
#define CKM_IBM_EC_X448                        (CKM_VENDOR_DEFINED + 0x1001e)
#define CKM_IBM_ED448_SHA3                     (CKM_VENDOR_DEFINED + 0x1001f)
#define CKM_IBM_DILITHIUM                      (CKM_VENDOR_DEFINED + 0x10023)
#define CKM_IBM_KYBER                          (CKM_VENDOR_DEFINED + 0x10024)
#define CKM_IBM_SHA3_224_HMAC                  (CKM_VENDOR_DEFINED + 0x10025)
#define CKM_IBM_SHA3_256_HMAC                  (CKM_VENDOR_DEFINED + 0x10026)
#define CKM_IBM_SHA3_384_HMAC                  (CKM_VENDOR_DEFINED + 0x10027)
#define CKM_IBM_SHA3_512_HMAC                  (CKM_VENDOR_DEFINED + 0x10028)
#define CKM_IBM_ECDSA_OTHER                    (CKM_VENDOR_DEFINED + 0x10031)
#define CKM_IBM_ATTRIBUTEBOUND_WRAP            (CKM_VENDOR_DEFINED + 0x20004)
#define CKM_IBM_BTC_DERIVE                     (CKM_VENDOR_DEFINED + 0x70001)

/* CK_IBM_ECDSA_OTHER_PARAMS.submechanism values; not mechanism types, despite the prefix */
#define CKM_IBM_ECSDSA_RAND                    3
#define CKM_IBM_ECSDSA_COMPR_MULTI             5

/* CK_IBM_BTC_DERIVE_PARAMS */
#define CK_IBM_BIP0032_HARDENED                0x80000000UL /* childKeyIndex flag */
#define CK_IBM_BIP0032_PRV2PRV                 1
#define CK_IBM_BIP0032_PRV2PUB                 2
#define CK_IBM_BIP0032_PUB2PUB                 3
#define CK_IBM_BIP0032_MASTERK                 4
#define CK_IBM_SLIP0010_PRV2PRV                5
#define CK_IBM_SLIP0010_PRV2PUB                6
#define CK_IBM_SLIP0010_PUB2PUB                7
#define CK_IBM_SLIP0010_MASTERK                8
#define CK_IBM_BTC_CHAINCODE_LENGTH            32
#define CK_IBM_BTC_DERIVE_PARAMS_VERSION_1     1

/* CK_IBM_KYBER_PARAMS */
#define CK_IBM_KYBER_KEYFORM_ROUND2_768        1
#define CK_IBM_KYBER_KEYFORM_ROUND2_1024       2
#define CK_IBM_KYBER_KEM_VERSION               0
#define CK_IBM_KYBER_KEM_ENCAPSULATE           1
#define CK_IBM_KYBER_KEM_DECAPSULATE           2

/*
 * Not vendor names: standard PKCS#11 2.40 values that NSS's pkcs11t.h leaves
 * out but p11-kit (and so our wire code) uses. Values from the OASIS PKCS#11
 * 2.40 specification, as in p11-kit's own pkcs11.h.
 */
#define CKO_OTP_KEY                            0x00000008UL
#define CKK_SECURID                            0x00000022UL
#define CKK_HOTP                               0x00000023UL
#define CKK_ACTI                               0x00000024UL
#define CKA_NAME_HASH_ALGORITHM                0x0000008cUL
#define CKN_OTP_CHANGED                        0x00000001UL
#define CKM_DES3_CMAC_GENERAL                  0x00000137UL
#define CKM_DES3_CMAC                          0x00000138UL
#define CKM_TLS10_MAC_SERVER                   0x000003d6UL
#define CKM_TLS10_MAC_CLIENT                   0x000003d7UL
#define CKM_AES_GMAC                           0x0000108eUL
#define CKM_CAMELLIA_CTR                       0x00000558UL
#define CKM_AES_OFB                            0x00002104UL
#define CKM_AES_CFB64                          0x00002105UL
#define CKM_AES_CFB8                           0x00002106UL
#define CKM_AES_CFB128                         0x00002107UL

#endif /* P11PROXY_VENDOR_EXTENSIONS_H */
