/*
 * test-pool-xml.c - unit tests of pools/xml.c: libvirt's scaled units, pool and volume XML
 * parse -> format -> parse stability, errors naming the element, hostile names; and of the
 * pool registry's persistence (define, autostart, "restart" by shutdown + init over the same
 * state directory, undefine).  Single-threaded, no daemon.
 */
#include "pools/pools.h"

#include "blockd/blockd.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static int failures;
static int checks;

#define CHECK(cond)                                                                                \
	do {                                                                                       \
		checks++;                                                                          \
		if (!(cond)) {                                                                     \
			failures++;                                                                \
			fprintf(stderr, "%s:%d: %s: check failed: %s\n", __FILE__, __LINE__,       \
				__func__, #cond);                                                  \
		}                                                                                  \
	} while (0)

static uint64_t scale(const char *num, const char *unit)
{
	struct bd_err err = {0};
	uint64_t v = 0;
	if (bd_pool_scale(num, unit, &v, &err) < 0)
		return UINT64_MAX;
	return v;
}

static void test_units(void)
{
	CHECK(scale("10", NULL) == 10);
	CHECK(scale("10", "bytes") == 10);
	CHECK(scale("10", "b") == 10);
	CHECK(scale("1", "KB") == 1000);
	CHECK(scale("1", "k") == 1024);
	CHECK(scale("1", "K") == 1024);
	CHECK(scale("1", "KiB") == 1024);
	CHECK(scale("2", "MB") == 2000000);
	CHECK(scale("2", "M") == 2u << 20);
	CHECK(scale("2", "MiB") == 2u << 20);
	CHECK(scale("3", "GB") == 3000000000ull);
	CHECK(scale("3", "GiB") == 3ull << 30);
	CHECK(scale("1", "TB") == 1000000000000ull);
	CHECK(scale("1", "T") == 1ull << 40);
	CHECK(scale("1", "PiB") == 1ull << 50);
	CHECK(scale("1", "EiB") == 1ull << 60);
	CHECK(scale("10G", NULL) == 10ull << 30);
	CHECK(scale("10GB", NULL) == 10000000000ull);
	CHECK(scale("16", "EiB") == UINT64_MAX); /* overflow */
	CHECK(scale("1", "XB") == UINT64_MAX);
	CHECK(scale("1", "KiBB") == UINT64_MAX);
	CHECK(scale("x", NULL) == UINT64_MAX);
	CHECK(scale("-1", NULL) == UINT64_MAX);
	CHECK(scale("99999999999999999999999", NULL) == UINT64_MAX);
}

static const char *const full_pool =
    "<pool type='iscsi'>\n"
    "  <name>p&amp;1</name>\n"
    "  <uuid>3e3fce45-4f53-4fa7-bb32-11f34168b82b</uuid>\n"
    "  <capacity unit='GiB'>2</capacity>\n"
    "  <allocation unit='KB'>5</allocation>\n"
    "  <available>42</available>\n"
    "  <source>\n"
    "    <host name='iscsi.example.com' port='3260'/>\n"
    "    <host name='h2'/>\n"
    "    <device path='iqn.2013-06.com.example:iscsi-pool'/>\n"
    "    <dir path='/exports'/>\n"
    "    <adapter type='fc_host' parent='scsi_host5' wwnn='20000000c9831b4b' "
    "wwpn='10000000c9831b4b'/>\n"
    "    <name>srcname</name>\n"
    "    <format type='gpt'/>\n"
    "    <initiator><iqn name='iqn.2013-06.com.example:iscsi-initiator'/></initiator>\n"
    "    <auth type='chap' username='myname'><secret usage='mycluster'/></auth>\n"
    "    <vendor name='Acme'/>\n"
    "    <product name='Widget'/>\n"
    "    <protocol ver='3'/>\n"
    "  </source>\n"
    "  <target>\n"
    "    <path>/dev/disk/by-path</path>\n"
    "    <permissions><mode>0755</mode><owner>107</owner><group>107</group>"
    "<label>system_u:object_r:virt_image_t:s0</label></permissions>\n"
    "  </target>\n"
    "</pool>\n";

static void test_pool_roundtrip(void)
{
	struct bd_err err = {0};
	struct bd_pool_def *d = NULL, *d2 = NULL;
	CHECK(bd_pool_def_parse(full_pool, strlen(full_pool), &d, &err) == 0);
	if (!d) {
		fprintf(stderr, "parse: %s\n", err.msg);
		return;
	}
	CHECK(!strcmp(d->name, "p&1"));
	CHECK(!strcmp(d->type, "iscsi"));
	CHECK(d->capacity == 2ull << 30);
	CHECK(d->allocation == 5000);
	CHECK(d->available == 42);
	CHECK(d->source.nhosts == 2 && d->source.hosts[0].port == 3260);
	CHECK(!strcmp(d->source.secret_usage, "mycluster"));
	CHECK(!strcmp(d->source.initiator_iqn, "iqn.2013-06.com.example:iscsi-initiator"));
	CHECK(d->perms.mode == 0755 && d->perms.owner == 107);
	CHECK(!strcmp(d->source.protocol_ver, "3"));
	for (int sizes = 0; sizes < 2; sizes++) {
		char *x = bd_pool_def_format(d, sizes), *x2;
		CHECK(x != NULL);
		CHECK(bd_pool_def_parse(x, strlen(x), &d2, &err) == 0);
		x2 = d2 ? bd_pool_def_format(d2, sizes) : NULL;
		CHECK(x2 && !strcmp(x, x2));
		if (x2 && strcmp(x, x2))
			fprintf(stderr, "first:\n%s\nsecond:\n%s\n", x, x2);
		free(x);
		free(x2);
		bd_pool_def_free(d2);
		d2 = NULL;
	}
	bd_pool_def_free(d);
}

static const char *const full_vol =
    "<volume type='file'>\n"
    "  <name>v1.qcow2</name>\n"
    "  <key>/var/lib/images/v1.qcow2</key>\n"
    "  <capacity unit='G'>10</capacity>\n"
    "  <allocation unit='MiB'>1</allocation>\n"
    "  <physical unit='bytes'>123</physical>\n"
    "  <target>\n"
    "    <path>/var/lib/images/v1.qcow2</path>\n"
    "    <format type='qcow2'/>\n"
    "    <permissions><mode>0644</mode></permissions>\n"
    "    <compat>1.1</compat>\n"
    "    <clusterSize unit='KiB'>64</clusterSize>\n"
    "    <features><lazy_refcounts/><extended_l2/></features>\n"
    "  </target>\n"
    "  <backingStore><path>/var/lib/images/base.img</path><format type='raw'/>"
    "</backingStore>\n"
    "</volume>\n";

static void test_vol_roundtrip(void)
{
	struct bd_err err = {0};
	struct bd_vol_def *d = NULL, *d2 = NULL;
	CHECK(bd_vol_def_parse(full_vol, strlen(full_vol), &d, &err) == 0);
	if (!d) {
		fprintf(stderr, "parse: %s\n", err.msg);
		return;
	}
	CHECK(d->capacity == 10ull << 30 && d->has_capacity);
	CHECK(d->allocation == 1u << 20);
	CHECK(d->cluster_size == 65536);
	CHECK(d->lazy_refcounts && d->extended_l2);
	CHECK(!strcmp(d->backing_format, "raw"));
	char *x = bd_vol_def_format(d), *x2 = NULL;
	CHECK(bd_vol_def_parse(x, strlen(x), &d2, &err) == 0);
	if (d2)
		x2 = bd_vol_def_format(d2);
	CHECK(x2 && !strcmp(x, x2));
	free(x);
	free(x2);
	bd_vol_def_free(d);
	bd_vol_def_free(d2);
}

/* The error for xml contains want. */
static void bad_pool(const char *xml, const char *want)
{
	struct bd_err err = {0};
	struct bd_pool_def *d = NULL;
	int r = bd_pool_def_parse(xml, strlen(xml), &d, &err);
	CHECK(r < 0 && !d);
	CHECK(strstr(err.msg, want) != NULL);
	if (!strstr(err.msg, want))
		fprintf(stderr, "  for %s: got '%s', want '%s'\n", xml, err.msg, want);
	bd_pool_def_free(d);
}

static void bad_vol(const char *xml, const char *want)
{
	struct bd_err err = {0};
	struct bd_vol_def *d = NULL;
	int r = bd_vol_def_parse(xml, strlen(xml), &d, &err);
	CHECK(r < 0 && !d);
	CHECK(strstr(err.msg, want) != NULL);
	if (!strstr(err.msg, want))
		fprintf(stderr, "  for %s: got '%s', want '%s'\n", xml, err.msg, want);
	bd_vol_def_free(d);
}

static void test_errors(void)
{
	bad_pool("", "invalid XML");
	bad_pool("<pool type='dir'><name>x</name>", "invalid XML");
	bad_pool("<volume/>", "<pool>");
	bad_pool("<pool><name>x</name></pool>", "'type'");
	bad_pool("<pool type='nope'><name>x</name></pool>", "unknown storage pool type 'nope'");
	bad_pool("<pool type='dir'><target><path>/x</path></target></pool>", "<name>");
	bad_pool("<pool type='dir'><name>x</name></pool>", "<target><path>");
	bad_pool("<pool type='dir'><name>a/b</name><target><path>/x</path></target></pool>", "'/'");
	bad_pool("<pool type='dir'><name>..</name><target><path>/x</path></target></pool>",
		 "not allowed");
	bad_pool("<pool type='dir'><name>x</name><target><path>rel</path></target></pool>",
		 "absolute");
	bad_pool("<pool type='fs'><name>x</name><target><path>/x</path></target></pool>",
		 "<source><device");
	bad_pool("<pool type='netfs'><name>x</name><source><dir path='/e'/></source><target>"
		 "<path>/x</path></target></pool>",
		 "<source><host>");
	bad_pool("<pool type='dir'><name>x</name><uuid>zz</uuid><target><path>/x</path></target>"
		 "</pool>",
		 "<uuid>");
	bad_pool("<pool type='dir'><name>x</name><capacity unit='ZB'>1</capacity><target><path>/x"
		 "</path></target></pool>",
		 "<capacity>");
	bad_pool("<pool type='dir'><name>x</name><source><host/></source><target><path>/x</path>"
		 "</target></pool>",
		 "<host>");
	bad_pool("<pool type='dir'><name>x</name><target><path>/x</path><permissions><mode>99"
		 "</mode></permissions></target></pool>",
		 "<mode>");
	bad_pool("<!DOCTYPE pool [<!ENTITY e SYSTEM 'file:///etc/passwd'>]><pool type='dir'>"
		 "<name>&e;</name><target><path>/x</path></target></pool>",
		 "");
	bad_pool("<pool type='fs'><name>x</name><source><device path='-x'/></source><target>"
		 "<path>/x</path></target></pool>",
		 "absolute");
	bad_pool("<pool type='fs'><name>x</name><source><device path='/dev/x'/><format "
		 "type='../../tmp/evil'/></source><target><path>/x</path></target></pool>",
		 "<source><format");
	bad_pool("<pool type='logical'><name>x</name><source><name>-vg</name></source></pool>",
		 "volume group name");
	bad_pool("<pool type='logical'><name>a b</name></pool>", "<source><name>");
	bad_vol("<volume><capacity>1</capacity></volume>", "<name>");
	bad_vol("<volume><name>../x</name></volume>", "'/'");
	bad_vol("<volume><name>v</name><capacity unit='bogus'>1</capacity></volume>", "<capacity>");
	bad_vol("<volume><name>v</name><target><compat>2</compat></target></volume>", "<compat>");
	bad_vol("<volume><name>v</name><backingStore/></volume>", "<backingStore><path>");
	bad_vol("<pool/>", "<volume>");
}

static void test_defaults(void)
{
	struct bd_err err = {0};
	struct bd_pool_def *d = NULL;
	const char *x = "<pool type='logical'><name>vg0</name></pool>";
	CHECK(bd_pool_def_parse(x, strlen(x), &d, &err) == 0);
	if (d) {
		CHECK(!strcmp(d->source.name, "vg0"));
		CHECK(!strcmp(d->target_path, "/dev/vg0"));
	}
	bd_pool_def_free(d);
	/* uuid without dashes is canonicalised */
	x = "<pool type='dir'><name>u</name><uuid>3E3FCE454F534FA7BB3211F34168B82B</uuid>"
	    "<target><path>/x</path></target></pool>";
	d = NULL;
	CHECK(bd_pool_def_parse(x, strlen(x), &d, &err) == 0);
	if (d)
		CHECK(!strcmp(d->uuid, "3e3fce45-4f53-4fa7-bb32-11f34168b82b"));
	bd_pool_def_free(d);
}

static bool listed(const char *name, bool *active, bool *autostart)
{
	json_t *l = bd_pool_list(), *p;
	size_t i;
	bool found = false;
	json_array_foreach(l, i, p)
	{
		if (strcmp(json_string_value(json_object_get(p, "name")), name))
			continue;
		found = true;
		*active = json_is_true(json_object_get(p, "active"));
		*autostart = json_is_true(json_object_get(p, "autostart"));
	}
	json_decref(l);
	return found;
}

static void test_persistence(void)
{
	char tmpl[] = "/tmp/test-pool-xml.XXXXXX", xml[1024], path[1200];
	struct bd_err err = {0};
	bool active = false, as = false;
	char *dir = mkdtemp(tmpl);
	CHECK(dir != NULL);
	if (!dir)
		return;
	snprintf(xml, sizeof(xml),
		 "<pool type='dir'><name>p1</name><target><path>%s/img</path></target></pool>",
		 dir);
	CHECK(bd_pools_init(dir, &err) == 0);
	CHECK(bd_pool_define_xml(xml, NULL, &err) == 0);
	CHECK(bd_pool_build("p1", BD_BUILD_DEFAULT, &err) == 0);
	CHECK(bd_pool_start("p1", false, BD_BUILD_DEFAULT, &err) == 0);
	CHECK(bd_pool_set_autostart("p1", true, &err) == 0);
	/* the same target for another pool is refused */
	snprintf(xml, sizeof(xml),
		 "<pool type='dir'><name>p2</name><target><path>%s/img/</path></target></pool>",
		 dir);
	bd_err_clear(&err);
	CHECK(bd_pool_define_xml(xml, NULL, &err) == -EEXIST);
	CHECK(strstr(err.msg, "p1") != NULL);
	/* a hostile volume name */
	struct bd_vol_def *v = calloc(1, sizeof(*v));
	v->name = strdup("../../etc/x");
	v->has_capacity = true;
	v->capacity = 4096;
	v->perms.mode = v->perms.owner = v->perms.group = -1;
	bd_err_clear(&err);
	CHECK(bd_vol_create_def("p1", v, NULL, &err) == -EINVAL);
	/* a real one */
	v = calloc(1, sizeof(*v));
	v->name = strdup("vol1");
	v->has_capacity = true;
	v->capacity = 1 << 20;
	v->perms.mode = v->perms.owner = v->perms.group = -1;
	bd_err_clear(&err);
	CHECK(bd_vol_create_def("p1", v, NULL, &err) == 0);
	snprintf(path, sizeof(path), "%s/img/vol1", dir);
	struct stat st;
	CHECK(stat(path, &st) == 0 && st.st_size == 1 << 20);

	/* "restart" */
	bd_pools_shutdown();
	CHECK(bd_pools_init(dir, &err) == 0);
	CHECK(listed("p1", &active, &as) && active && as);
	json_t *vl = bd_vol_list("p1", &err);
	CHECK(vl && json_array_size(vl) == 1);
	json_decref(vl);
	bd_err_clear(&err);
	CHECK(bd_pool_undefine("p1", &err) == -EBUSY);
	CHECK(bd_vol_delete("p1", "vol1", &err) == 0);
	CHECK(bd_pool_destroy("p1", &err) == 0);
	CHECK(bd_pool_delete("p1", &err) == 0);
	CHECK(bd_pool_undefine("p1", &err) == 0);
	bd_pools_shutdown();
	CHECK(bd_pools_init(dir, &err) == 0);
	CHECK(!listed("p1", &active, &as));
	bd_pools_shutdown();
	snprintf(path, sizeof(path), "rm -rf '%s'", dir);
	CHECK(system(path) == 0);
}

int main(void)
{
	test_units();
	test_pool_roundtrip();
	test_vol_roundtrip();
	test_errors();
	test_defaults();
	test_persistence();
	printf("%d checks, %d failures\n", checks, failures);
	return failures ? 1 : 0;
}
