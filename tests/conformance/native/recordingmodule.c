/*
 * A PKCS#11 3.0 module for tests that wraps a real one (RECORDING_MODULE_TARGET, e.g. NSS
 * softoken) and appends one line per message-based data call to RECORDING_MODULE_LOG before
 * passing it on:  "<function> parameter=<pointer> length=<ulParameterLen>".  A test runs the broker
 * against it and reads the log to see exactly which calls reached the module, and with what.
 * RECORDING_MODULE_INIT_RESERVED, when set, is handed to the real C_Initialize as pReserved if the
 * caller gave none (softoken needs its database there).
 */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <nss/pkcs11.h>

static CK_FUNCTION_LIST_3_0 real;   /* the wrapped module's table, copied */
static CK_FUNCTION_LIST_3_0 table;  /* ours: the same, message calls recorded */
static CK_FUNCTION_LIST table240;
static CK_INTERFACE interfaces[2];
static int loaded;

static void record(const char *function, CK_VOID_PTR parameter, CK_ULONG length)
{
    const char *path = getenv("RECORDING_MODULE_LOG");
    FILE *log = path ? fopen(path, "a") : NULL;
    if (log == NULL) return;
    fprintf(log, "%s parameter=%p length=%lu\n", function, parameter, length);
    fclose(log);
}

static CK_RV rec_Initialize(CK_VOID_PTR args)
{
    const char *reserved = getenv("RECORDING_MODULE_INIT_RESERVED");
    CK_C_INITIALIZE_ARGS copy;
    if (reserved != NULL && (args == NULL || ((CK_C_INITIALIZE_ARGS *)args)->LibraryParameters == NULL)) {
        memset(&copy, 0, sizeof copy);
        if (args != NULL) copy = *(CK_C_INITIALIZE_ARGS *)args;
        else copy.flags = CKF_OS_LOCKING_OK;
        /* NSS names the standard pReserved field LibraryParameters. */
        copy.LibraryParameters = (CK_CHAR_PTR *)reserved;
        args = &copy;
    }
    return real.C_Initialize(args);
}

#define RECORD_CRYPT(name) \
    static CK_RV rec_##name(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR a, CK_ULONG al, \
                            CK_BYTE_PTR i, CK_ULONG il, CK_BYTE_PTR o, CK_ULONG_PTR ol) \
    { record("C_" #name, p, pl); return real.C_##name(s, p, pl, a, al, i, il, o, ol); }
RECORD_CRYPT(EncryptMessage)
RECORD_CRYPT(DecryptMessage)

static CK_RV rec_EncryptMessageBegin(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR a, CK_ULONG al)
{ record("C_EncryptMessageBegin", p, pl); return real.C_EncryptMessageBegin(s, p, pl, a, al); }
static CK_RV rec_DecryptMessageBegin(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR a, CK_ULONG al)
{ record("C_DecryptMessageBegin", p, pl); return real.C_DecryptMessageBegin(s, p, pl, a, al); }
static CK_RV rec_EncryptMessageNext(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR i, CK_ULONG il,
                                    CK_BYTE_PTR o, CK_ULONG_PTR ol, CK_FLAGS f)
{ record("C_EncryptMessageNext", p, pl); return real.C_EncryptMessageNext(s, p, pl, i, il, o, ol, f); }
static CK_RV rec_DecryptMessageNext(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR i, CK_ULONG il,
                                    CK_BYTE_PTR o, CK_ULONG_PTR ol, CK_FLAGS f)
{ record("C_DecryptMessageNext", p, pl); return real.C_DecryptMessageNext(s, p, pl, i, il, o, ol, f); }
static CK_RV rec_SignMessage(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl,
                             CK_BYTE_PTR sig, CK_ULONG_PTR sl)
{ record("C_SignMessage", p, pl); return real.C_SignMessage(s, p, pl, d, dl, sig, sl); }
static CK_RV rec_SignMessageBegin(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl)
{ record("C_SignMessageBegin", p, pl); return real.C_SignMessageBegin(s, p, pl); }
static CK_RV rec_SignMessageNext(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl,
                                 CK_BYTE_PTR sig, CK_ULONG_PTR sl)
{ record("C_SignMessageNext", p, pl); return real.C_SignMessageNext(s, p, pl, d, dl, sig, sl); }
static CK_RV rec_VerifyMessage(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl,
                               CK_BYTE_PTR sig, CK_ULONG sl)
{ record("C_VerifyMessage", p, pl); return real.C_VerifyMessage(s, p, pl, d, dl, sig, sl); }
static CK_RV rec_VerifyMessageBegin(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl)
{ record("C_VerifyMessageBegin", p, pl); return real.C_VerifyMessageBegin(s, p, pl); }
static CK_RV rec_VerifyMessageNext(CK_SESSION_HANDLE s, CK_VOID_PTR p, CK_ULONG pl, CK_BYTE_PTR d, CK_ULONG dl,
                                   CK_BYTE_PTR sig, CK_ULONG sl)
{ record("C_VerifyMessageNext", p, pl); return real.C_VerifyMessageNext(s, p, pl, d, dl, sig, sl); }

static CK_RV load(void)
{
    if (loaded) return CKR_OK;
    const char *path = getenv("RECORDING_MODULE_TARGET");
    void *library = path ? dlopen(path, RTLD_NOW | RTLD_LOCAL) : NULL;
    if (library == NULL) return CKR_GENERAL_ERROR;
    CK_C_GetInterface get = (CK_C_GetInterface)dlsym(library, "C_GetInterface");
    CK_VERSION version = { 3, 0 };
    CK_INTERFACE *found = NULL;
    if (get == NULL || get((CK_UTF8CHAR_PTR)"PKCS 11", &version, &found, 0) != CKR_OK || found == NULL)
        return CKR_GENERAL_ERROR;
    real = *(CK_FUNCTION_LIST_3_0 *)found->pFunctionList;
    table = real;
    table.C_Initialize = rec_Initialize;
    table.C_EncryptMessage = rec_EncryptMessage;
    table.C_DecryptMessage = rec_DecryptMessage;
    table.C_EncryptMessageBegin = rec_EncryptMessageBegin;
    table.C_DecryptMessageBegin = rec_DecryptMessageBegin;
    table.C_EncryptMessageNext = rec_EncryptMessageNext;
    table.C_DecryptMessageNext = rec_DecryptMessageNext;
    table.C_SignMessage = rec_SignMessage;
    table.C_SignMessageBegin = rec_SignMessageBegin;
    table.C_SignMessageNext = rec_SignMessageNext;
    table.C_VerifyMessage = rec_VerifyMessage;
    table.C_VerifyMessageBegin = rec_VerifyMessageBegin;
    table.C_VerifyMessageNext = rec_VerifyMessageNext;
    /* The 2.40 list is the 3.0 one up to C_WaitForSlotEvent. */
    memcpy(&table240, &table, sizeof table240);
    table240.version.major = 2;
    table240.version.minor = 40;
    interfaces[0].pInterfaceName = (CK_UTF8CHAR_PTR)"PKCS 11";
    interfaces[0].pFunctionList = &table;
    interfaces[1].pInterfaceName = (CK_UTF8CHAR_PTR)"PKCS 11";
    interfaces[1].pFunctionList = &table240;
    loaded = 1;
    return CKR_OK;
}

CK_RV C_GetFunctionList(CK_FUNCTION_LIST_PTR_PTR list)
{
    CK_RV rv = load();
    if (rv != CKR_OK) return rv;
    *list = &table240;
    return CKR_OK;
}

CK_RV C_GetInterfaceList(CK_INTERFACE_PTR list, CK_ULONG_PTR count)
{
    CK_RV rv = load();
    if (rv != CKR_OK) return rv;
    if (list == NULL) { *count = 2; return CKR_OK; }
    if (*count < 2) { *count = 2; return CKR_BUFFER_TOO_SMALL; }
    memcpy(list, interfaces, sizeof interfaces);
    *count = 2;
    return CKR_OK;
}

CK_RV C_GetInterface(CK_UTF8CHAR_PTR name, CK_VERSION_PTR version, CK_INTERFACE_PTR_PTR found, CK_FLAGS flags)
{
    CK_RV rv = load();
    if (rv != CKR_OK) return rv;
    if (name != NULL && strcmp((const char *)name, "PKCS 11") != 0) return CKR_ARGUMENTS_BAD;
    *found = (version != NULL && version->major == 2) ? &interfaces[1] : &interfaces[0];
    return flags == 0 ? CKR_OK : CKR_ARGUMENTS_BAD;
}
