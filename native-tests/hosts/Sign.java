// Signs with the token's keys through SunPKCS11 (out/p11proxy.so) and verifies in software with
// the certificates' public keys. Usage: java Sign.java CONFIG PIN DIR (DIR holds rsa.pem, ec.pem).
import java.io.FileInputStream;
import java.nio.charset.StandardCharsets;
import java.security.KeyStore;
import java.security.PrivateKey;
import java.security.Provider;
import java.security.Security;
import java.security.Signature;
import java.security.cert.CertificateFactory;
import java.security.cert.X509Certificate;
import java.util.Collections;

public class Sign {
    public static void main(String[] args) throws Exception {
        Provider provider = Security.getProvider("SunPKCS11").configure(args[0]);
        Security.addProvider(provider);
        KeyStore ks = KeyStore.getInstance("PKCS11", provider);
        ks.load(null, args[1].toCharArray());
        System.out.println("provider " + provider.getName() + ": aliases " + Collections.list(ks.aliases()));
        CertificateFactory cf = CertificateFactory.getInstance("X.509");
        byte[] data = ("signed through p11proxy at " + System.nanoTime()).getBytes(StandardCharsets.UTF_8);
        String[][] cases = {
            {"rsa-key", "rsa.pem", "SHA256withRSA", "SunRsaSign"},
            {"ec-key", "ec.pem", "SHA256withECDSA", "SunEC"},
        };
        for (String[] c : cases) {
            X509Certificate fileCert;
            try (FileInputStream in = new FileInputStream(args[2] + "/" + c[1])) {
                fileCert = (X509Certificate) cf.generateCertificate(in);
            }
            X509Certificate tokenCert = (X509Certificate) ks.getCertificate(c[0]);
            if (tokenCert == null || !tokenCert.equals(fileCert))
                throw new AssertionError(c[0] + ": the token's certificate is not " + c[1]);
            PrivateKey key = (PrivateKey) ks.getKey(c[0], null);
            if (key == null) throw new AssertionError(c[0] + ": no private key");
            Signature signer = Signature.getInstance(c[2], provider);
            signer.initSign(key);
            signer.update(data);
            byte[] sig = signer.sign();
            Signature verifier = Signature.getInstance(c[2], c[3]);
            verifier.initVerify(fileCert.getPublicKey());
            verifier.update(data);
            if (!verifier.verify(sig)) throw new AssertionError(c[0] + ": " + c[2] + " signature does not verify");
            verifier.initVerify(fileCert.getPublicKey());
            verifier.update(new byte[] {1, 2, 3});
            if (verifier.verify(sig)) throw new AssertionError(c[0] + ": signature verifies other data");
            System.out.println(c[2] + " with " + c[0] + " (" + key.getClass().getSimpleName() + ", provider "
                + signer.getProvider().getName() + "): " + sig.length + "-byte signature verified by " + c[3]
                + " with " + c[1] + "'s public key");
        }
    }
}
