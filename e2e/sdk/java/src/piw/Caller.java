package piw;

import software.amazon.awssdk.core.util.VersionInfo;
import software.amazon.awssdk.services.sts.StsClient;
import software.amazon.awssdk.services.sts.model.GetCallerIdentityResponse;

/**
 * What a Java service does with the AWS SDK for Java 2.x: a client built with no credentials
 * given, so it uses DefaultCredentialsProvider (system properties, environment, web identity
 * token file, shared files, container/EKS Pod Identity, IMDS), and one STS GetCallerIdentity.
 * Prints one JSON object; exits 0 either way.
 */
public final class Caller {
    private Caller() {}

    public static void main(String[] args) {
        String arn = null;
        String error = null;
        try (StsClient sts = StsClient.create()) {
            GetCallerIdentityResponse ident = sts.getCallerIdentity();
            arn = ident.arn();
        } catch (RuntimeException e) {
            error = e.getClass().getSimpleName() + ": " + e.getMessage();
        }
        System.out.println(Json.result(VersionInfo.SDK_VERSION, arn, error));
    }
}
