// Plain Java (java.net.http.HttpClient): a native call and a compatible stream, through BASE_URL.
import java.net.URI;
import java.net.http.HttpClient;
import java.net.http.HttpRequest;
import java.net.http.HttpResponse;

public class Client {
    public static void main(String[] args) throws Exception {
        String base = System.getenv("BASE_URL");
        String key = System.getenv("DASHSCOPE_API_KEY");
        HttpClient client = HttpClient.newHttpClient();
        HttpRequest call = HttpRequest.newBuilder(
                URI.create(base + "/api/v1/services/aigc/text-generation/generation"))
            .header("Authorization", "Bearer " + key)
            .header("Content-Type", "application/json")
            .header("X-Costsplit-Scenario", "java-app")
            .POST(HttpRequest.BodyPublishers.ofString(
                "{\"model\":\"qwen-plus\",\"input\":{\"messages\":[{\"role\":\"user\","
                + "\"content\":\"Say hello from Java.\"}]},\"parameters\":{\"result_format\":\"message\"}}"))
            .build();
        HttpResponse<String> answer = client.send(call, HttpResponse.BodyHandlers.ofString());
        System.out.println(answer.statusCode());
        System.out.println(answer.body());
        HttpRequest stream = HttpRequest.newBuilder(
                URI.create(base + "/compatible-mode/v1/chat/completions"))
            .header("Authorization", "Bearer " + key)
            .header("Content-Type", "application/json")
            .header("X-Costsplit-Scenario", "java-app")
            .POST(HttpRequest.BodyPublishers.ofString(
                "{\"model\":\"qwen-plus\",\"stream\":true,\"messages\":[{\"role\":\"user\","
                + "\"content\":\"Say hello from Java.\"}]}"))
            .build();
        HttpResponse<java.util.stream.Stream<String>> lines =
            client.send(stream, HttpResponse.BodyHandlers.ofLines());
        System.out.println(lines.statusCode());
        lines.body().forEach(System.out::println);
    }
}
