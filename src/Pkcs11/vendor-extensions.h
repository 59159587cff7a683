/* Vendor constants that p11-kit's RPC protocol refers to (attribute kinds, mechanism parameter
 * layouts) but that no Debian PKCS#11 header defines. Values as p11-kit 0.26 defines them for
 * IBM's EP11/CCA tokens (p11-kit's common/pkcs11x.h). Input to generate-constants.sh. */
#ifndef P11PROXY_VENDOR_EXTENSIONS_H
#define P11PROXY_VENDOR_EXTENSIONS_H

#define CKA_IBM_OPAQUE                    (CKA_VENDOR_DEFINED + 1)
#define CKA_IBM_OPAQUE_REENC              (CKA_VENDOR_DEFINED + 3)
#define CKA_IBM_OPAQUE_OLD                (CKA_VENDOR_DEFINED + 4)
#define CKA_IBM_RESTRICTABLE              (CKA_VENDOR_DEFINED + 0x10001)
#define CKA_IBM_NEVER_MODIFIABLE          (CKA_VENDOR_DEFINED + 0x10002)
#define CKA_IBM_RETAINKEY                 (CKA_VENDOR_DEFINED + 0x10003)
#define CKA_IBM_ATTRBOUND                 (CKA_VENDOR_DEFINED + 0x10004)
#define CKA_IBM_KEYTYPE                   (CKA_VENDOR_DEFINED + 0x10005)
#define CKA_IBM_CV                        (CKA_VENDOR_DEFINED + 0x10006)
#define CKA_IBM_MACKEY                    (CKA_VENDOR_DEFINED + 0x10007)
#define CKA_IBM_USE_AS_DATA               (CKA_VENDOR_DEFINED + 0x10008)
#define CKA_IBM_STRUCT_PARAMS             (CKA_VENDOR_DEFINED + 0x10009)
#define CKA_IBM_STD_COMPLIANCE1           (CKA_VENDOR_DEFINED + 0x1000a)
#define CKA_IBM_PROTKEY_EXTRACTABLE       (CKA_VENDOR_DEFINED + 0x1000c)
#define CKA_IBM_PROTKEY_NEVER_EXTRACTABLE (CKA_VENDOR_DEFINED + 0x1000d)
#define CKA_IBM_DILITHIUM_KEYFORM         (CKA_VENDOR_DEFINED + 0xd0001)
#define CKA_IBM_DILITHIUM_RHO             (CKA_VENDOR_DEFINED + 0xd0002)
#define CKA_IBM_DILITHIUM_SEED            (CKA_VENDOR_DEFINED + 0xd0003)
#define CKA_IBM_DILITHIUM_TR              (CKA_VENDOR_DEFINED + 0xd0004)
#define CKA_IBM_DILITHIUM_S1              (CKA_VENDOR_DEFINED + 0xd0005)
#define CKA_IBM_DILITHIUM_S2              (CKA_VENDOR_DEFINED + 0xd0006)
#define CKA_IBM_DILITHIUM_T0              (CKA_VENDOR_DEFINED + 0xd0007)
#define CKA_IBM_DILITHIUM_T1              (CKA_VENDOR_DEFINED + 0xd0008)
#define CKA_IBM_DILITHIUM_MODE            (CKA_VENDOR_DEFINED + 0x00010)
#define CKA_IBM_CCA_AES_KEY_MODE          (CKA_VENDOR_DEFINED + 0xd0101)
#define CKA_IBM_OPAQUE_PKEY               (CKA_VENDOR_DEFINED + 0xd0100)
#define CKA_IBM_KYBER_MODE                (CKA_VENDOR_DEFINED + 0x0000E)
#define CKA_IBM_KYBER_KEYFORM             (CKA_VENDOR_DEFINED + 0xd0009)
#define CKA_IBM_KYBER_PK                  (CKA_VENDOR_DEFINED + 0xd000A)
#define CKA_IBM_KYBER_SK                  (CKA_VENDOR_DEFINED + 0xd000B)

#define CKM_IBM_SHA3_224                  (CKM_VENDOR_DEFINED + 0x10001)
#define CKM_IBM_SHA3_256                  (CKM_VENDOR_DEFINED + 0x10002)
#define CKM_IBM_SHA3_384                  (CKM_VENDOR_DEFINED + 0x10003)
#define CKM_IBM_SHA3_512                  (CKM_VENDOR_DEFINED + 0x10004)
#define CKM_IBM_CMAC                      (CKM_VENDOR_DEFINED + 0x10007)
#define CKM_IBM_EC_X25519                 (CKM_VENDOR_DEFINED + 0x1001b)
#define CKM_IBM_ED25519_SHA512            (CKM_VENDOR_DEFINED + 0x1001c)
#define CKM_IBM_EC_X448                   (CKM_VENDOR_DEFINED + 0x1001e)
#define CKM_IBM_ED448_SHA3                (CKM_VENDOR_DEFINED + 0x1001f)
#define CKM_IBM_DILITHIUM                 (CKM_VENDOR_DEFINED + 0x10023)
#define CKM_IBM_KYBER                     (CKM_VENDOR_DEFINED + 0x10024)
#define CKM_IBM_SHA3_224_HMAC             (CKM_VENDOR_DEFINED + 0x10025)
#define CKM_IBM_SHA3_256_HMAC             (CKM_VENDOR_DEFINED + 0x10026)
#define CKM_IBM_SHA3_384_HMAC             (CKM_VENDOR_DEFINED + 0x10027)
#define CKM_IBM_SHA3_512_HMAC             (CKM_VENDOR_DEFINED + 0x10028)
#define CKM_IBM_ECDSA_OTHER               (CKM_VENDOR_DEFINED + 0x10031)
#define CKM_IBM_ATTRIBUTEBOUND_WRAP       (CKM_VENDOR_DEFINED + 0x20004)
#define CKM_IBM_BTC_DERIVE                (CKM_VENDOR_DEFINED + 0x70001)

/* Kyber key encapsulation modes (CK_IBM_KYBER_PARAMS.mode). */
#define CK_IBM_KYBER_KEM_ENCAPSULATE      1
#define CK_IBM_KYBER_KEM_DECAPSULATE      2

#endif
